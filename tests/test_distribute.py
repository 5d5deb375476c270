"""fit --distribute mirrored on two devices of this CPU (separate processes: devices are set at start-up)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cifar_keras.config import RECIPES

SCRIPT = textwrap.dedent("""
    import json, os, sys
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf  # two logical CPU devices stand in for two GPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from cifar_keras.training import fit
    from cifar_keras.config import make_config
    config = make_config("mlp", epochs=2, batch_size=25, val_size=100, precision="float32",
                         distribute="mirrored", model_args={"hidden": [32, 16]})
    record = fit.fit(config, data_dir=sys.argv[1], output_dir=sys.argv[2])
    print(json.dumps(record))
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_mirrored_fit_scales_batch_and_learning_rate(backend, data_root, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(data_root), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["backend"] == backend and record["replicas"] == 2
    assert record["global_batch_size"] == 50 and record["config"]["batch_size"] == 25
    assert record["scaled_learning_rate"] == pytest.approx(2 * RECIPES["mlp"]["learning_rate"])
    assert record["config"]["learning_rate"] == RECIPES["mlp"]["learning_rate"]  # the per-replica value
    assert record["config"]["distribute"] == "mirrored" and record["config"]["model_args"] == {"hidden": [32, 16]}
    assert record["epochs"] == 2 and (tmp_path / "mlp.keras").is_file()
    # 500 training images in global batches of 50: 10 steps an epoch.
    assert record["throughput"]["train_images_per_s"] > 0 and record["train_images"] == 500
