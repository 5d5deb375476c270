"""The core tests (models, short fit, evaluate) under the JAX and PyTorch backends.

Each backend runs in its own pytest process: Keras fixes the backend at import.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# What runs through the backend's own ops: the models' outputs, the TTA views, the whitening stem, the identity
# init, Muon's update, a short fit, evaluate and the saved model. Left out: what does not depend on the backend
# (registries, argument checks, parameter counts) and the learning-rate schedules (plain Keras ops, and 12 s of
# per-step compilation under JAX).
CORE = ["tests/test_models.py", "-k", "raw_pixels or tta or whitening or dirac or muon or fit_writes or evaluate_recomputes or saved_model_is",
        "tests/test_cli.py::test_fit_writes_model_log_and_run_record",
        "tests/test_cli.py::test_evaluate_recomputes_the_recorded_metrics",
        "tests/test_cli.py::test_saved_model_is_float32_and_predicts_raw_pixels"]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_core_tests_pass_under_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout.splitlines()[-1] and "skipped" not in done.stdout.splitlines()[-1]


def test_export_on_torch_says_it_needs_tensorflow_or_jax(tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    script = ("import sys\nfrom cifar_keras import cli, models\nmodels.mlp(hidden=(8, 8)).save(sys.argv[1])\n"
              "sys.exit(cli.main(['export', sys.argv[1], '--root', sys.argv[2]]))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.keras"), str(tmp_path / "out")],
                          env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "SavedModel export needs the tensorflow or jax backend, not torch" in done.stderr.strip().splitlines()[-1]


def test_export_from_jax_matches_the_keras_model(tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax not installed")
    script = """
import sys
import numpy as np
from cifar_keras import cli
from cifar_keras import models
model = models.cnn(widths=(8, 8, 8), stem_width=8)
model.save(sys.argv[1])
assert cli.main(["export", sys.argv[1], "--root", sys.argv[2], "--name", "tiny"]) == 0
pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
np.save(sys.argv[3], np.stack([model.predict(pixels, verbose=0), pixels[..., 0].reshape(4, -1)[:, :100]]))
np.save(sys.argv[4], pixels)
"""
    args = [str(tmp_path / name) for name in ("m.keras", "out", "expected.npy", "pixels.npy")]
    done = subprocess.run([sys.executable, "-c", script, *args], env={**os.environ, "KERAS_BACKEND": "jax"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "out" / "tiny" / "1")).signatures["serving_default"]
    pixels = np.load(tmp_path / "pixels.npy")
    expected = np.load(tmp_path / "expected.npy")[0]
    assert np.allclose(serve(pixels=tf.constant(pixels))["probabilities"].numpy(), expected, atol=1e-5)
