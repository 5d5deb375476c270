"""A command run in a fresh process (its own backend or runtime) that reports one JSON object on standard output."""

import json
import subprocess


class Failed(Exception):
    """The command exited with an error or reported no JSON object; the message says why in one line."""


def run_json(argv, env=None, cwd=None):
    """Run `argv` (env: its environment, default this process's; cwd: its folder) and return the JSON object of its
    last standard-output line that starts with '{' (the lines before may be anything: a runtime's chatter).

    Failed when it exits with an error, or with none of those lines, with the last line it wrote on standard error
    (less an 'error: ' prefix, at most 300 characters); Failed when that line is not JSON."""
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    objects = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not objects:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode} and no output"])[-1]
        raise Failed(last.removeprefix("error: ")[:300])
    try:
        return json.loads(objects[-1])
    except ValueError:
        raise Failed(f"its last output line is not JSON: {objects[-1][:200]}") from None
