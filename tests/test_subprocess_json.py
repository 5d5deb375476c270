"""run_json: the JSON object a fresh Python process reports, or one line saying why there is none."""

import sys

import pytest

from cifar_keras.subprocess_json import Failed, run_json


def python(code):
    return [sys.executable, "-c", code]


def test_the_last_json_line_of_standard_output_after_any_chatter(tmp_path):
    code = "import os; print('loading runtime'); print('{\"n\": 1}'); print('{\"cwd\": \"%s\"}' % os.getcwd())"
    assert run_json(python(code), cwd=tmp_path) == {"cwd": str(tmp_path)}
    assert run_json(python("import os; print('{\"x\": \"' + os.environ['X'] + '\"}')"), env={"X": "y"}) == {"x": "y"}


@pytest.mark.parametrize("code, message", [
    ("import sys; print('{}'); sys.exit('error: no runtime for litert')", "no runtime for litert"),  # an exit code
    ("raise ValueError('bad model file')", "ValueError: bad model file"),  # a traceback's last line
    ("print('nothing of JSON')", "exit code 0 and no output"),
    ("import sys; sys.exit(3)", "exit code 3 and no output"),
    ("print('{half')", "its last output line is not JSON: {half"),
])
def test_a_failure_is_one_line(code, message):
    with pytest.raises(Failed) as error:
        run_json(python(code))
    assert str(error.value) == message


def test_the_message_is_at_most_300_characters():
    with pytest.raises(Failed) as error:
        run_json(python("raise SystemExit('x' * 1000)"))
    assert str(error.value) == "x" * 300
