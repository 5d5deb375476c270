"""fit and evaluate through the command line, on the tiny synthetic data set."""

import csv
import dataclasses
import json
import time

import keras
import numpy as np
import pytest

from cifar_keras import cli
from cifar_keras import data
from cifar_keras import models
from cifar_keras import hardware
from cifar_keras.training import budget, finalise, fit
from cifar_keras.config import make_config

QUICK = ["--epochs", "2", "--batch-size", "50", "--val-size", "100", "--precision", "float32"]


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fitted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["fit", "mlp", *QUICK, "--hparams", "none", "--data-dir", str(data_root), "--output-dir", str(out)]
    assert cli.main(argv) == 0
    return out, json.loads((out / "mlp.json").read_text())


def test_fit_writes_model_log_and_run_record(fitted):
    out, record = fitted
    assert record["model"] == "mlp" and record["epochs"] == 2 and record["config"]["batch_size"] == 50
    assert record["train_images"] == 500 and record["val_images"] == 100 and record["test"]["images"] == 200
    assert record["command"].startswith("python -m cifar_keras fit mlp --epochs 2")
    assert record["params"] == keras.saving.load_model(out / "mlp.keras").count_params()
    assert record["backend"] == keras.backend.backend() and record["hardware"]["cores"] >= 1
    log = read_log(out / "mlp.log.csv")
    train_time = sum(float(row["train_time"]) for row in log)
    assert record["throughput"]["train_images_per_s"] == pytest.approx(2 * 500 / train_time, rel=0.01)
    assert record["config"] == make_config("mlp", epochs=2, batch_size=50, val_size=100,
                                           precision="float32").to_dict()
    assert record["hparams"] == "built-in" and record["hparams_file"] is None
    assert record["compute"]["training_flops"] == 3 * record["compute"]["forward_flops_per_image"] * 1000
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
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    probs = model.predict(pixels, verbose=0)
    assert probs.shape == (2, 100) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(model.predict(pixels.astype(np.float32), verbose=0), probs, atol=1e-6)


def test_cnn_learns_the_synthetic_cue(data_root, tmp_path):
    """A few epochs of the CNN beat chance (1%) clearly: the whole loop trains."""
    config = make_config("cnn", epochs=10, batch_size=50, val_size=100, precision="float32",
                               learning_rate=0.1, label_smoothing=0.0, crop_pad=0,
                               model_args=dict(widths=(16, 32, 32), stem_width=8))
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["val"]["top1"] > 10 and record["test"]["top1"] > 10


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_fit_resumes_where_it_stopped(data_root, tmp_path):
    config = make_config("mlp", epochs=4, batch_size=50, val_size=100, precision="float32",
                               model_args=dict(hidden=(32, 16)))
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Interrupt()])
    assert [r["epoch"] for r in read_log(tmp_path / "mlp.log.csv")] == ["0", "1"]
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["resumed"] is True and record["epochs"] == 4
    assert [r["epoch"] for r in read_log(tmp_path / "mlp.log.csv")] == ["0", "1", "2", "3"]


def test_a_new_run_beside_a_finished_one_leaves_it_as_it_is(data_root, tmp_path, capsys):
    argv = ["fit", "mlp", *QUICK, "--epochs", "1", "--hparams", "none", "--data-dir", str(data_root),
            "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    finished = {f: (tmp_path / f).read_bytes() for f in ("mlp.keras", "mlp.json", "mlp.log.csv")}
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'mlp'}.keras is a finished run: this run goes to {tmp_path / 'runs' / 'mlp-1'}/" in out
    assert {f: (tmp_path / f).read_bytes() for f in finished} == finished
    second = json.loads((tmp_path / "runs" / "mlp-1" / "mlp.json").read_text())
    assert second["resumed"] is False and second["files"]["model"] == str(tmp_path / "runs" / "mlp-1" / "mlp.keras")
    assert len(read_log(tmp_path / "runs" / "mlp-1" / "mlp.log.csv")) == 1
    assert cli.main([*argv, "--overwrite"]) == 0  # replaces the finished run on purpose, in its place
    assert (tmp_path / "mlp.json").read_bytes() != finished["mlp.json"]
    assert len(read_log(tmp_path / "mlp.log.csv")) == 1 and not (tmp_path / "runs" / "mlp-2").exists()


def test_an_interrupted_run_beside_a_finished_one_resumes_in_its_own_folder(data_root, tmp_path):
    config = make_config("mlp", epochs=2, **TINY_MLP)
    fit.fit(dataclasses.replace(config, epochs=1), data_dir=data_root, output_dir=tmp_path)
    finished = (tmp_path / "mlp.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Stop(0)])
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    folder = tmp_path / "runs" / "mlp-1"
    assert record["resumed"] is True and record["epochs"] == 2 and record["files"]["model"] == str(folder / "mlp.keras")
    assert [r["epoch"] for r in read_log(folder / "mlp.log.csv")] == ["0", "1"]
    assert (tmp_path / "mlp.json").read_bytes() == finished and not (tmp_path / "runs" / "mlp-2").exists()


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
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and err.endswith("\n")


def test_corrupt_model_file_is_one_line_error(tmp_path, data_root, capsys):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    assert cli.main(["evaluate", str(bad), "--data-dir", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: cannot load model") and err.count("\n") == 1


def test_bad_option_value_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "cnn", "--epochs", "-3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("fit: error: argument --epochs: must be >= 1, got -3\n")


def test_no_test_leaves_the_test_set_unseen(data_root, tmp_path, monkeypatch, capsys):
    scored = []
    predict = finalise.predict_outputs
    monkeypatch.setattr(finalise, "predict_outputs", lambda model, images, *a: scored.append(len(images))
                        or predict(model, images, *a))
    argv = ["fit", "mlp", *QUICK, "--epochs", "1", "--no-test", "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert scored and set(scored) == {100}  # the validation split (once per view), never the 200 test images
    assert record["test"] is None and record["config"]["test_set"] is False
    assert "test set not used" in capsys.readouterr().out


@pytest.mark.parametrize("flags, gpus, policy", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),
    ({"avx2", "avx512f", "avx512_bf16"}, [], "float32"),  # bfloat16 without AMX trains slower (bench_no_amx.json)
    ({"avx2"}, ["GPU 0"], "mixed_float16"),
])
def test_auto_precision_follows_the_hardware(flags, gpus, policy, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "gpus", lambda: gpus)
    assert hardware.resolve_precision("auto") == policy
    assert hardware.resolve_precision("float32") == "float32"


TINY_MLP = dict(batch_size=50, val_size=100, precision="float32", model_args=dict(hidden=(32, 16), dropout=0.0))


class Stop(keras.callbacks.Callback):
    """Interrupts a run at the end of epoch `at`, after its backup was written."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


def weights_of(path):
    return keras.saving.load_model(path).get_weights()


def test_a_resumed_run_ends_as_an_uninterrupted_one(data_root, tmp_path):
    """Same batches after the resume, so the same final weights (a resume that reshuffles fails this)."""
    config = make_config("mlp", epochs=3, **TINY_MLP)
    straight = fit.fit(config, data_dir=data_root, output_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path / "resumed", extra_callbacks=[Stop(0)])
    resumed = fit.fit(config, data_dir=data_root, output_dir=tmp_path / "resumed")
    assert resumed["resumed"] and resumed["epochs"] == 3
    assert resumed["test"]["top1"] == pytest.approx(straight["test"]["top1"], abs=1e-6)
    for a, b in zip(weights_of(tmp_path / "straight" / "mlp.keras"), weights_of(tmp_path / "resumed" / "mlp.keras")):
        assert np.allclose(a, b, atol=1e-5)
    straight_log, resumed_log = read_log(tmp_path / "straight" / "mlp.log.csv"), read_log(tmp_path / "resumed" / "mlp.log.csv")
    assert [float(r["val_loss"]) for r in resumed_log] == pytest.approx([float(r["val_loss"]) for r in straight_log], rel=1e-4)


class Snapshot(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()


def test_a_resumed_run_keeps_the_best_checkpoint_of_before(data_root, tmp_path):
    """An epoch before the interruption that scored best stays the saved model after the resume."""
    config = make_config("mlp", epochs=3, **TINY_MLP)
    snapshot = Snapshot()
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[snapshot, Stop(0)])
    log = tmp_path / "mlp.log.csv"
    rows = read_log(log)
    rows[0]["val_accuracy"] = "1.0"  # epoch 0 scored best: no later epoch may replace its checkpoint
    with open(log, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["best_epoch"] == 1
    for saved, best in zip(weights_of(tmp_path / "mlp.keras"), snapshot.weights):
        assert np.allclose(saved, best)


class FlatValidation(keras.callbacks.Callback):
    """Reports the same validation accuracy every epoch: no epoch improves."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_accuracy"] = 0.5


@pytest.mark.parametrize("patience, epochs_run", [(0, 4), (1, 2), (2, 3)])
def test_patience_stops_a_run_that_stopped_improving(patience, epochs_run, data_root, tmp_path):
    config = make_config("mlp", epochs=4, patience=patience, **TINY_MLP)
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[FlatValidation()])
    assert record["epochs"] == epochs_run


def test_patience_counts_the_epochs_before_a_resume(data_root, tmp_path):
    """Best at epoch 0, interrupted after epoch 1: with patience 2 the resumed run stops after epoch 2 (a fresh
    count would run to epoch 4)."""
    config = make_config("mlp", epochs=5, patience=2, **TINY_MLP)
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Stop(1)])
    log = tmp_path / "mlp.log.csv"
    rows = read_log(log)
    assert len(rows) == 2
    rows[0]["val_accuracy"], rows[1]["val_accuracy"] = "0.9", "0.5"
    with open(log, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[FlatValidation()])
    assert record["resumed"] and record["epochs"] == 3


def test_fit_tta_saves_the_flip_averaged_model_and_states_its_cost(data_root, tmp_path):
    from cifar_keras import models

    config = make_config("mlp", epochs=1, tta=True, **TINY_MLP)
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    saved = keras.saving.load_model(tmp_path / "mlp.keras")
    assert saved.name == "mlp_flip_tta" and record["flip_tta"] is True
    assert "top1_flip_tta" in record["val"] and "top1_float32" in record["val"]
    base = models.mlp(hidden=(32, 16), dropout=0.0)
    assert record["params"] == base.count_params()  # the mirror's fixed 32x32 matrix is not a parameter
    compute = record["compute"]
    assert compute["inference_flops_per_image"] == 2 * compute["forward_flops_per_image"] + 2 * 32 * 32 * 96


def test_evaluate_on_the_validation_split_matches_the_record(fitted, data_root, capsys):
    out, record = fitted
    capsys.readouterr()
    assert cli.main(["evaluate", str(out / "mlp.keras"), "--split", "val", "--val-size", "100",
                     "--data-dir", str(data_root)]) == 0
    result = json.loads(capsys.readouterr().out)["val"]
    assert result["images"] == 100 and result["top1"] == pytest.approx(record["val"]["top1_float32"], abs=0.01)


def test_evaluate_scores_another_test_time_augmentation(fitted, data_root, capsys, tmp_path):
    out, _ = fitted
    dataset = data.load(data_root)
    model = keras.saving.load_model(out / "mlp.keras")
    wrapped = models.with_tta(model, translate=True)
    expected = 100 * np.mean(wrapped.predict(dataset.test.images.astype("float32"), verbose=0).argmax(1)
                             == dataset.test.fine)
    capsys.readouterr()
    assert cli.main(["evaluate", str(out / "mlp.keras"), "--tta", "flip_translate", "--data-dir", str(data_root),
                     "--output", str(tmp_path / "tta.json")]) == 0
    record = json.loads((tmp_path / "tta.json").read_text())
    assert record["tta"] == "flip_translate" and record["test"]["top1"] == pytest.approx(expected, abs=1e-6)
    # Re-wrapping a TTA model scores its inner model: "none" undoes the wrapper.
    wrapped.save(tmp_path / "wrapped.keras")
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "wrapped.keras"), "--tta", "none", "--data-dir", str(data_root)]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["top1"] == pytest.approx(
        100 * np.mean(model.predict(dataset.test.images.astype("float32"), verbose=0).argmax(1) == dataset.test.fine),
        abs=1e-6)


def test_fit_announces_the_run_and_writes_tensorboard_logs(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no tuning/ folder here: the built-in recipe
    argv = ["fit", "mlp", *QUICK, "--epochs", "1", "--data-dir", str(data_root), "--output-dir", "out",
            "--tensorboard", "tb"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if not line.startswith("fit: warning:"))
    assert first.startswith("fit: mlp = mlp (built-in recipe), tensorflow backend, float32, 1 replica(s)")
    assert "500 training images, 1 epochs" in first
    assert "of training steps left" in out
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))


def test_fit_records_the_hyperparameter_file_and_code_version(data_root, tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"model": "mlp", "hparams": {"learning_rate": 0.004, "model_args": {"hidden": [32, 16]}}}))
    argv = ["fit", "mlp", *QUICK, "--epochs", "1", "--hparams", str(path), "--data-dir", str(data_root),
            "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert record["hparams"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert record["config"]["learning_rate"] == 0.004 and record["config"]["model_args"] == {
        "hidden": [32, 16], "dropout": 0.3, "leaky_alpha": 0.1}  # the tuned file's arguments over the recipe's
    assert len(record["code"]["git_commit"]) == 40 and isinstance(record["code"]["git_dirty"], bool)


def test_unknown_model_args_in_a_hyperparameter_file_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"model": "mlp", "hparams": {"model_args": {"depth": 3}}}))
    assert cli.main(["fit", "mlp", "--hparams", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: unknown model_args for mlp: depth\n"


def test_time_budget_covers_the_whole_command(data_root, tmp_path, capsys):
    """18 s for everything: start-up, the epochs, and finalising (flip TTA: two passes of each split)."""
    config = make_config("mlp", epochs=1, time_budget=0.3, tta=True, **TINY_MLP)
    started = time.perf_counter()
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    whole = time.perf_counter() - started
    timing = record["time_budget"]
    planned = timing["planned"]
    assert record["epochs"] == planned["epochs"] == timing["planned_epochs"] == record["config"]["epochs"] > 1
    assert planned["wall_s"] == pytest.approx(planned["startup_s"] + planned["epochs"] * planned["s_per_epoch"]
                                              + planned["finalise_s"], abs=0.2 + planned["epochs"] * 0.005)
    # Whole epochs: the plan fills the budget, less its margin for slower later epochs, to within one epoch (from
    # the rounded record values).
    plan_s = 18 / budget.MARGIN
    assert plan_s - planned["s_per_epoch"] - 0.5 < planned["wall_s"] <= plan_s + 0.5
    assert planned["finalise_s"] > 0 and planned["startup_s"] >= timing["measurement_s"]
    # Generous: beside another test process, tiny epochs (about 49 planned) run far from the plan (28 and 46 s seen).
    assert timing["wall_time_s"] <= whole + 0.1 and whole < 3 * 18
    first = capsys.readouterr().out.splitlines()
    line = next(line for line in first if "min budget" in line)
    assert line.startswith("fit: 0.3 min budget for the whole command") and \
        f"start-up {planned['startup_s']:.0f} s + {planned['epochs']} epochs x " in line and "finalising" in line


def test_a_larger_time_budget_never_plans_fewer_epochs():
    epochs = [budget.epochs_in_budget(minutes * 60, 37.5) for minutes in (0.5, 1, 2, 5, 10, 45)]
    assert epochs == sorted(epochs) and epochs[0] == 1 and epochs[-1] == 72


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([w.copy() for w in self.model.get_weights()])


def test_weight_average_follows_every_weight_including_batchnorm_statistics():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    average, recorder = fit.WeightAverage(0.9, every=2), Recorder()
    x, y = np.random.default_rng(0).normal(size=(64, 4)), np.random.default_rng(1).normal(size=(64, 2))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder, average])
    snapshots = recorder.seen[1::2]  # the average is taken every second step
    expected = snapshots[0]
    for weights in snapshots[1:]:
        expected = [0.81 * e + 0.19 * w for e, w in zip(expected, weights)]
    for got, want in zip(average.weights, expected):
        assert np.allclose(got, want, atol=1e-6)
    moving_mean = [i for i, w in enumerate(model.weights) if "moving_mean" in w.path][0]
    assert not np.allclose(average.weights[moving_mean], recorder.seen[-1][moving_mean])  # averaged too


def test_fit_with_weight_averaging_saves_what_scores_best_on_validation(data_root, tmp_path):
    config = make_config("mlp", epochs=3, ema=0.9, **TINY_MLP)
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    val = record["val"]
    assert val["saved_weights"] == ("ema" if val["top1_ema"] > val["top1_float32"] else "best_epoch")
    from cifar_keras import data
    from cifar_keras.evaluation.metrics import evaluate_model

    dataset = data.load(data_root)
    split = data.train_val_split(dataset.train, 100)[1]
    saved = evaluate_model(keras.saving.load_model(tmp_path / "mlp.keras"), split, dataset.fine_to_coarse())
    assert saved["top1"] == pytest.approx(max(val["top1_ema"], val["top1_float32"]), abs=0.01)


def test_a_run_resumes_only_with_its_own_config(data_root, tmp_path, capsys):
    config = make_config("mlp", epochs=3, **TINY_MLP)
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Stop(0)])
    argv = ["fit", "mlp", "--epochs", "5", "--batch-size", "50", "--val-size", "100", "--precision", "float32",
            "--model-args", '{"hidden": [32, 16], "dropout": 0.0}', "--hparams", "none",
            "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "with another config" in err and err.count("\n") == 1
    assert fit.fit(config, data_dir=data_root, output_dir=tmp_path)["resumed"] is True  # its own config resumes


def test_a_run_interrupted_before_an_option_existed_resumes(data_root, tmp_path):
    """A run saved by older code lacks options added since, which it ran at their defaults: it still resumes."""
    config = make_config("mlp", epochs=2, **TINY_MLP)
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Stop(0)])
    saved = tmp_path / ".work" / "mlp" / "config.json"
    older = json.loads(saved.read_text())
    del older["noise"]
    saved.write_text(json.dumps(older))
    assert fit.fit(config, data_dir=data_root, output_dir=tmp_path)["resumed"] is True


@pytest.mark.parametrize("argv, message", [
    (["--time-budget", "inf"], "must be a finite number"),
    (["--lr", "nan"], "must be a finite number"),
    (["--model-args", '{"stem": "whitn"}'], "do not build a cnn (stem must be 'conv' or 'whiten'"),
    (["--model-args", '{"widths": 5}'], "do not build a cnn"),
    (["--model-args", '{"num_classes": 10}'], "unknown model_args for cnn: num_classes"),
    (["--hparams", "."], ".: cannot read"),
    (["--low-res-epochs", "3"], "--low-res-epochs needs --low-res SIZE"),
    (["--low-res", "24", "--epochs", "4"], "--low-res-epochs must be from 1 to 3"),
    (["--low-res", "24", "--low-res-epochs", "4", "--epochs", "4"], "--low-res-epochs must be from 1 to 3"),
    (["--low-res", "40", "--low-res-epochs", "1"], "must be in [0, 31], got 40"),
    (["--low-res", "4", "--low-res-epochs", "1"], "--low-res must be 0 (off) or from 8 to 31 pixels, got 4"),
])
def test_bad_values_are_one_line_errors(argv, message, capsys):
    try:
        code = cli.main(["fit", "cnn", *argv])
    except SystemExit as exit_info:  # argparse's own one-line error
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().splitlines()[-1].count("error") == 1


def test_progressive_resizing_trains_small_first_and_saves_a_32_pixel_model(data_root, tmp_path, capsys):
    argv = ["fit", "cnn", *QUICK, "--epochs", "3", "--low-res", "16", "--low-res-epochs", "2", "--hparams", "none",
            "--model-args", '{"widths": [8, 8, 8]}', "--no-tta", "--ema", "0", "--no-test",
            "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "cnn.json").read_text())
    assert keras.saving.load_model(tmp_path / "cnn.keras").input_shape == (None, 32, 32, 3)
    compute = record["compute"]
    assert compute["low_res"]["size"] == 16 and compute["low_res"]["train_images_seen"] == 2 * 500
    # A conv net's FLOPs scale with its pixels: a quarter at 16 x 16 (the tiny classifier aside).
    small, full = compute["low_res"]["forward_flops_per_image"], compute["forward_flops_per_image"]
    assert small == pytest.approx(full / 4, rel=0.02)
    assert compute["training_flops"] == 3 * (2 * 500 * small + 500 * full)


class StopAtPhase(keras.callbacks.Callback):
    """Interrupts a run as its second fit (the full-size epochs of progressive resizing) begins."""

    def __init__(self):
        super().__init__()
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1
        if self.fits == 2:
            raise KeyboardInterrupt


def test_progressive_resizing_resumes_between_its_phases_as_an_uninterrupted_run(data_root, tmp_path):
    """Stopped after the low-resolution epochs, before the first full-size one: the rerun starts from the backup
    of the last low-resolution epoch and ends with the weights of a run that was never stopped."""
    config = make_config("cnn", epochs=2, low_res=16, low_res_epochs=1, batch_size=50, val_size=100, ema=0.0,
                         precision="float32", tta=False, test_set=False, model_args=dict(widths=(8, 8, 8)))
    fit.fit(config, data_dir=data_root, output_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path / "resumed", extra_callbacks=[StopAtPhase()])
    resumed = fit.fit(config, data_dir=data_root, output_dir=tmp_path / "resumed")
    assert resumed["resumed"] and resumed["epochs"] == 2
    for a, b in zip(weights_of(tmp_path / "straight" / "cnn.keras"), weights_of(tmp_path / "resumed" / "cnn.keras")):
        assert np.allclose(a, b, atol=1e-5)


def test_progressive_resizing_needs_a_convolutional_model(data_root, tmp_path, capsys):
    argv = ["fit", "mlp", *QUICK, "--low-res", "16", "--low-res-epochs", "1", "--hparams", "none",
            "--data-dir", str(data_root), "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "model 'mlp' takes only 32 x 32 images" in err and err.count("\n") == 1


class BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_a_run_interrupted_while_finalising_trains_nothing_again(data_root, tmp_path, monkeypatch):
    """Keras' BackupAndRestore drops its backup when training ends: the rerun finalises from the trained state."""
    config = make_config("mlp", epochs=2, ema=0.9, tta=True, **TINY_MLP)
    straight = fit.fit(config, data_dir=data_root, output_dir=tmp_path / "straight")
    finalise = fit.finalise

    def interrupted(*args):
        monkeypatch.setattr(fit, "finalise", finalise)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "finalise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path / "resumed")
    counter = BatchCounter()
    resumed = fit.fit(config, data_dir=data_root, output_dir=tmp_path / "resumed", extra_callbacks=[counter])
    assert counter.batches == 0 and resumed["resumed"] is True
    assert [r["epoch"] for r in read_log(tmp_path / "resumed" / "mlp.log.csv")] == ["0", "1"]
    for key in ("epochs", "best_epoch", "views", "compute"):
        assert resumed[key] == straight[key]
    assert resumed["val"]["saved_weights"] == straight["val"]["saved_weights"]
    for key in ("val", "test", "test_single_view"):
        numbers = [k for k, v in straight[key].items() if isinstance(v, float)]
        assert {k: resumed[key][k] for k in numbers} == pytest.approx({k: straight[key][k] for k in numbers}, abs=1e-4)
    assert resumed["calibration"]["temperature"] == pytest.approx(straight["calibration"]["temperature"], rel=1e-4)
    assert not (tmp_path / "resumed" / ".work").joinpath("mlp").exists()


@pytest.mark.parametrize("tta, translate, views", [(False, False, 1), (True, False, 2), (True, True, 6)])
def test_the_record_holds_the_single_view_and_the_shipped_test_top1(tta, translate, views, data_root, tmp_path):
    config = make_config("mlp", epochs=1, tta=tta, tta_translate=translate, **TINY_MLP)
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    test = data.load(data_root).test
    saved = keras.saving.load_model(tmp_path / "mlp.keras")
    network = models.tta_inner(saved) if tta else saved
    single = network.predict(test.images.astype("float32"), verbose=0)
    shipped = saved.predict(test.images.astype("float32"), verbose=0)
    assert record["views"] == views
    assert record["test_single_view"]["top1"] == pytest.approx(100 * np.mean(single.argmax(1) == test.fine), abs=1e-4)
    assert record["test"]["top1"] == pytest.approx(100 * np.mean(shipped.argmax(1) == test.fine), abs=1e-4)
    assert record["test_single_view"]["images"] == record["test"]["images"] == 200
    if not tta:
        assert record["test_single_view"] == record["test"]


def test_a_single_process_fit_runs_no_cluster_code(data_root, tmp_path, monkeypatch):
    from cifar_keras.distributed import multiworker
    from cifar_keras.training import run_folder

    def cluster_code(*args, **kwargs):
        raise AssertionError("cluster code ran")

    for module, function in ((multiworker, "join"), (multiworker, "join_cluster"), (multiworker.Team, "__init__"),
                             (multiworker.Team, "leave"), (run_folder, "prepare_shared_run_folder")):
        monkeypatch.setattr(module, function, cluster_code)
    record = fit.fit(make_config("mlp", epochs=1, **TINY_MLP), data_dir=data_root, output_dir=tmp_path)
    assert record["processes"] == 1 and (tmp_path / "mlp.keras").is_file()


@pytest.mark.parametrize("dirty", [True, False])
def test_fit_warns_in_one_line_when_the_git_tree_has_uncommitted_changes(dirty, data_root, tmp_path, monkeypatch,
                                                                         capsys):
    from cifar_keras import records

    monkeypatch.setattr(records, "code_version", lambda: {"git_commit": "0" * 40, "git_dirty": dirty})
    record = fit.fit(make_config("mlp", epochs=1, **TINY_MLP), data_dir=data_root, output_dir=tmp_path)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "uncommitted changes" in line]
    assert warnings == (["fit: warning: the git tree has uncommitted changes: the record's git_commit is not exactly "
                         "the code that ran"] if dirty else [])
    assert record["code"] == {"git_commit": "0" * 40, "git_dirty": dirty}
