"""What depends on the machine: here, that TensorFlow's C++ start-up lines stay out of a command's output."""

import os
import subprocess
import sys

import pytest


def evaluate_a_missing_model(tmp_path, level):
    """stderr of a command that imports TensorFlow, then fails on its argument; TF_CPP_MIN_LOG_LEVEL=`level`."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    done = subprocess.run([sys.executable, "-m", "cifar_keras", "evaluate", str(tmp_path / "none.keras")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    return done.stderr


@pytest.mark.parametrize("level", [None, "3"])  # 2 takes the same path as 3
def test_the_usual_ways_to_silence_tensorflow_print_no_start_up_lines(tmp_path, level):
    assert evaluate_a_missing_model(tmp_path, level) == f"error: {tmp_path / 'none.keras'}: model file not found\n"


def test_asking_for_tensorflows_info_shows_its_start_up_lines(tmp_path):
    """Level 0 keeps everything, which also shows that the command does import TensorFlow."""
    lines = evaluate_a_missing_model(tmp_path, "0").splitlines()
    assert lines[-1] == f"error: {tmp_path / 'none.keras'}: model file not found" and len(lines) > 1
