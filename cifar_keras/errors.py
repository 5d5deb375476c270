"""The one exception type the command line turns into a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an argument): shown as one line, exit code 2."""
