"""fit and evaluate through the command line, on the tiny synthetic data set."""

import csv
import json

import keras
import numpy as np
import pytest

from cifar_keras import cli, train

QUICK = ["--epochs", "2", "--batch-size", "50", "--val-size", "100", "--precision", "float32"]


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fitted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["fit", "mlp", *QUICK, "--data-dir", str(data_root), "--output-dir", str(out)]
    assert cli.main(argv) == 0
    return out, json.loads((out / "mlp.json").read_text())


def test_fit_writes_model_log_and_run_record(fitted):
    out, record = fitted
    assert record["model"] == "mlp" and record["epochs"] == 2 and record["config"]["batch_size"] == 50
    assert record["train_images"] == 500 and record["val_images"] == 100 and record["test"]["images"] == 200
    assert record["command"].startswith("python -m cifar_keras fit mlp --epochs 2")
    assert record["params"] == keras.saving.load_model(out / "mlp.keras").count_params()
    assert record["backend"] == keras.backend.backend() and record["hardware"]["cores"] >= 1
    assert record["throughput"]["train_images_per_s"] > 0
    assert 0 <= record["test"]["top1"] <= record["test"]["top5"] <= 100
    log = read_log(out / "mlp.log.csv")
    assert [row["epoch"] for row in log] == ["0", "1"]
    assert record["train_wall_time_s"] == pytest.approx(sum(float(r["epoch_time"]) for r in log), abs=0.1)
    assert not (out / ".work" / "mlp").exists()  # scratch space cleaned up


def test_evaluate_recomputes_the_recorded_metrics(fitted, data_root, capsys, tmp_path):
    out, record = fitted
    capsys.readouterr()
    assert cli.main(["evaluate", str(out / "mlp.keras"), "--data-dir", str(data_root),
                     "--output", str(tmp_path / "eval.json")]) == 0
    printed = json.loads(capsys.readouterr().out)["test"]
    for key in ("top1", "top5", "superclass"):
        assert printed[key] == pytest.approx(record["test"][key], abs=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["test"]["top1"] == printed["top1"]


def test_saved_model_is_float32_and_predicts_raw_pixels(fitted):
    out, _ = fitted
    model = keras.saving.load_model(out / "mlp.keras")
    assert all(w.dtype == "float32" for w in model.weights)
    probs = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert probs.shape == (2, 100)


def test_cnn_learns_the_synthetic_cue(data_root, tmp_path):
    """A few epochs of the CNN beat chance (1%) clearly: the whole loop trains."""
    config = train.make_config("cnn", epochs=10, batch_size=50, val_size=100, precision="float32",
                               learning_rate=0.1, label_smoothing=0.0, crop_pad=0,
                               model_args=dict(widths=(16, 32, 32), stem_width=8))
    record = train.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["val"]["top1"] > 10 and record["test"]["top1"] > 10


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_fit_resumes_where_it_stopped(data_root, tmp_path):
    config = train.make_config("mlp", epochs=4, batch_size=50, val_size=100, precision="float32",
                               model_args=dict(hidden=(32, 16)))
    with pytest.raises(KeyboardInterrupt):
        train.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Interrupt()])
    assert [r["epoch"] for r in read_log(tmp_path / "mlp.log.csv")] == ["0", "1"]
    record = train.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["resumed"] is True and record["epochs"] == 4
    assert [r["epoch"] for r in read_log(tmp_path / "mlp.log.csv")] == ["0", "1", "2", "3"]


def test_a_fresh_fit_in_the_same_dir_starts_over(data_root, tmp_path):
    config = train.make_config("mlp", epochs=1, batch_size=50, val_size=100, precision="float32",
                               model_args=dict(hidden=(32, 16)))
    train.fit(config, data_dir=data_root, output_dir=tmp_path)
    record = train.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["resumed"] is False and len(read_log(tmp_path / "mlp.log.csv")) == 1


@pytest.mark.parametrize("argv, message", [
    (["fit", "mlp", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir: holds neither"),
    (["fit", "mlp", "--val-size", "100", "--train-size", "150"], "--train-size 150 must be a positive multiple"),
    (["fit", "mlp"], "--val-size needs more than 50 images per class; class 0 has 6"),
    (["evaluate", "/nonexistent/model.keras"], "/nonexistent/model.keras: model file not found"),
])
def test_bad_input_is_one_line_error(argv, message, data_root, capsys):
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(data_root)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {err[7:]}" and message in err and "\n" not in err


def test_corrupt_model_file_is_one_line_error(tmp_path, data_root, capsys):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    assert cli.main(["evaluate", str(bad), "--data-dir", str(data_root)]) == 2
    assert "broken.keras: cannot load model" in capsys.readouterr().err


def test_bad_option_value_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "cnn", "--epochs", "-3"])
    assert exit_info.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_no_test_leaves_the_test_set_unseen(data_root, tmp_path, monkeypatch, capsys):
    scored = []
    evaluate = train.evaluate_model
    monkeypatch.setattr(train, "evaluate_model", lambda model, split, *a: scored.append(len(split)) or evaluate(model, split, *a))
    argv = ["fit", "mlp", *QUICK, "--epochs", "1", "--no-test", "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert scored == [100]  # the validation split only, never the 200 test images
    assert record["test"] is None and record["config"]["test_set"] is False
    assert "test set not used" in capsys.readouterr().out


@pytest.mark.parametrize("flags, gpus, policy", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),
    ({"avx2", "avx512f", "avx512_bf16"}, [], "float32"),  # bfloat16 without AMX trains slower (bench_no_amx.json)
    ({"avx2"}, ["GPU 0"], "mixed_float16"),
])
def test_auto_precision_follows_the_hardware(flags, gpus, policy, monkeypatch):
    from cifar_keras import records

    monkeypatch.setattr(records, "cpu_flags", lambda: flags)
    monkeypatch.setattr(records, "gpus", lambda: gpus)
    assert train.resolve_precision("auto") == policy
    assert train.resolve_precision("float32") == "float32"
