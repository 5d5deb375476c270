"""fit --backend: a run on another backend trains in a process of its own; auto picks the fastest in a probe and
records it; the saved model loads under TensorFlow."""

import importlib.util
import json

import keras
import pytest

from cifar_keras import cli
from cifar_keras.cli import backend

TINY = ["fit", "mlp", "--hparams", "none", "--epochs", "1", "--batch-size", "50", "--val-size", "100",
        "--precision", "float32", "--model-args", '{"hidden": [16], "dropout": 0.0}']


def test_the_backend_flag_is_dropped_in_both_spellings():
    assert backend.without_backend_flag(["fit", "cnn", "--backend", "auto", "--epochs", "2"]) == [
        "fit", "cnn", "--epochs", "2"]
    assert backend.without_backend_flag(["fit", "--backend=torch", "cnn"]) == ["fit", "cnn"]


def test_the_probe_picks_the_fastest_backend_that_trained(monkeypatch):
    monkeypatch.setattr(backend, "installed", lambda: ["tensorflow", "jax", "torch"])
    asked = []

    def bench_run(model, backends, precisions, batch_size, steps, warmup, variants):
        asked.append((model, backends, batch_size, variants))
        return [{"backend": "tensorflow", "train_images_per_s": 38.9}, {"backend": "jax", "error": "out of memory"},
                {"backend": "torch", "train_images_per_s": 49.0}]

    found = backend.probe("cnn", 256, {"widths": [8, 8, 8]}, bench_run)
    assert found["chosen"] == "torch" and found["images_per_s"] == {"tensorflow": 38.9, "torch": 49.0}
    assert asked == [("cnn", ["tensorflow", "jax", "torch"], 256, (("recipe", {"model_args": {"widths": [8, 8, 8]}}),))]


def test_auto_trains_on_the_probes_choice_in_its_own_process_and_records_it(data_root, tmp_path, monkeypatch,
                                                                             capsys):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    found = {"images_per_s": {"tensorflow": 38.9, "torch": 49.0}, "chosen": "torch", "steps": 4}
    monkeypatch.setattr(backend, "probe", lambda *args: found)
    argv = [*TINY, "--backend", "auto", "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "training on torch" in capsys.readouterr().out
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert record["backend"] == "torch" and record["backend_probe"] == found
    assert "--backend" not in record["command"]
    model = keras.saving.load_model(tmp_path / "mlp.keras")  # this process runs TensorFlow
    assert keras.backend.backend() == "tensorflow" and model.output_shape == (None, 100)


def test_auto_that_chooses_this_processs_backend_trains_here(data_root, tmp_path, monkeypatch):
    found = {"images_per_s": {"tensorflow": 60.0, "torch": 49.0}, "chosen": "tensorflow", "steps": 4}
    monkeypatch.setattr(backend, "probe", lambda *args: found)
    monkeypatch.setattr(backend.subprocess, "call", lambda *a, **k: pytest.fail("no other process was needed"))
    argv = [*TINY, "--backend", "auto", "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert record["backend"] == "tensorflow" and record["backend_probe"] == found


def test_a_cluster_does_not_choose_its_backend(capsys):
    assert cli.main(["fit", "mlp", "--backend", "auto", "--distribute", "multiworker"]) == 2
    assert "a cluster's processes run on JAX" in capsys.readouterr().err
