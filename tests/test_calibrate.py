"""Calibration scores on hand-made examples; temperature scaling fitted, folded into a model, saved and reloaded."""

import json
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from cifar_keras.evaluation import calibration, scores
from cifar_keras import cli
from cifar_keras import data
from cifar_keras import models
from cifar_keras.data import pipeline
from cifar_keras.training import finalise, fit
from cifar_keras.config import make_config
from cifar_keras.evaluation.metrics import evaluate_model

# Five images, four classes. With 15 bins, bin i holds confidences in (i/15, (i+1)/15]: 0.9 -> bin 13
# (0.867, 0.933], 0.55 -> bin 8 (0.533, 0.6], 0.45 -> bin 6 (0.4, 0.467], 0.85 -> bin 12 (0.8, 0.867].
HAND_PROBABILITIES = np.array([
    [0.90, 0.05, 0.03, 0.02],  # label 0: right, confidence 0.9
    [0.90, 0.05, 0.03, 0.02],  # label 1: wrong, confidence 0.9 (same bin as the first)
    [0.10, 0.55, 0.25, 0.10],  # label 1: right, confidence 0.55
    [0.25, 0.30, 0.45, 0.00],  # label 2: right, confidence 0.45
    [0.05, 0.05, 0.05, 0.85],  # label 0: wrong, confidence 0.85
])
HAND_LABELS = np.array([0, 1, 1, 2, 0])


def test_ece_of_a_hand_made_example():
    # Bin 13 holds two images, accuracy 1/2, mean confidence 0.9: weight 2/5, gap 0.4 -> 0.16.
    # Bins 8, 6 and 12 hold one image each: 1/5 * (|1 - 0.55| + |1 - 0.45| + |0 - 0.85|) = 0.09 + 0.11 + 0.17.
    assert scores.ece(HAND_PROBABILITIES, HAND_LABELS) == pytest.approx(0.16 + 0.09 + 0.11 + 0.17, abs=1e-12)
    # One bin: |accuracy 3/5 - mean confidence (0.9 + 0.9 + 0.55 + 0.45 + 0.85) / 5 = 0.73| = 0.13.
    assert scores.ece(HAND_PROBABILITIES, HAND_LABELS, bins=1) == pytest.approx(0.13, abs=1e-12)
    # Right and wrong answers in one bin offset each other before the absolute value (not per image).
    assert scores.ece(HAND_PROBABILITIES[:2], HAND_LABELS[:2]) == pytest.approx(0.4, abs=1e-12)


def test_ece_bins_are_closed_on_the_right():
    # Confidence exactly 0.5 with 2 bins lies in (0, 0.5], with 0.4 (both wrong: gaps add, no offset).
    probabilities = np.array([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.7, 0.2, 0.1]])
    labels = np.array([1, 1, 0])
    # bin (0, 0.5]: accuracy 0, confidence 0.45, weight 2/3 -> 0.3; bin (0.5, 1]: |1 - 0.7| / 3 = 0.1.
    assert scores.ece(probabilities, labels, bins=2) == pytest.approx(0.3 + 0.1, abs=1e-12)


def test_nll_and_brier_of_a_hand_made_example():
    assert scores.nll(HAND_PROBABILITIES[:2], HAND_LABELS[:2]) == pytest.approx(
        -(math.log(0.9) + math.log(0.05)) / 2, abs=1e-12)
    # Image 1: 0.1^2 + 0.05^2 + 0.03^2 + 0.02^2 = 0.0138;
    # image 2: 0.9^2 + (0.05 - 1)^2 + 0.03^2 + 0.02^2 = 0.81 + 0.9025 + 0.0009 + 0.0004 = 1.7138.
    assert scores.brier(HAND_PROBABILITIES[:2], HAND_LABELS[:2]) == pytest.approx((0.0138 + 1.7138) / 2, abs=1e-12)
    assert scores.brier(np.eye(3), np.arange(3)) == 0.0 and scores.brier(np.eye(3), [1, 2, 0]) == 2.0


def overconfident_logits(n, classes=10, true_temperature=2.5, seed=0):
    """Logits whose labels are drawn from softmax(logits / true_temperature): a model that is too sure
    by exactly that factor."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, classes))
    p = np.exp(calibration._log_softmax(logits / true_temperature))
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


def test_fit_temperature_recovers_the_true_temperature():
    logits, labels = overconfident_logits(20000)
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before, after = scores.nll(calibration.probabilities(logits), labels), scores.nll(
        calibration.probabilities(logits, temperature), labels)
    assert after < before - 0.1
    # A calibrated model is left (nearly) alone.
    assert calibration.fit_temperature(logits / 2.5, labels) == pytest.approx(1.0, rel=0.05)


def test_fitted_temperature_is_never_worse_than_t1_on_its_own_data():
    """On data where T = 1 is best, the fitted T is no worse than T = 1 on the NLL it minimises."""
    # Labels drawn from the model's own probabilities: the best T is close to 1, so a search that
    # skipped T = 1 or stopped short of the optimum would do worse than leaving the model alone.
    logits, labels = overconfident_logits(60, seed=3, true_temperature=1.0)
    temperature = calibration.fit_temperature(logits, labels)
    assert 0.5 < temperature < 2.0
    assert calibration._nll_at([logits], labels, temperature) <= calibration._nll_at([logits], labels, 1.0)


def test_fit_temperature_finds_the_minimum_of_a_dense_grid():
    """Oracle: the NLL at 20001 temperatures evenly spaced in log T over the searched range, in plain numpy."""
    logits, labels = overconfident_logits(400, seed=5, true_temperature=1.7)
    temperatures = np.exp(np.linspace(np.log(0.05), np.log(20.0), 20001))  # steps of 0.03 % in T
    z = logits[None] / temperatures[:, None, None]
    z = z - z.max(axis=2, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    best = temperatures[np.argmax(log_p[:, np.arange(len(labels)), labels].sum(axis=1))]
    assert calibration.fit_temperature(logits, labels) == pytest.approx(best, rel=1e-3)


def test_fit_temperature_of_averaged_views_minimises_the_averaged_nll():
    logits, labels = overconfident_logits(5000, seed=1)
    other = logits + np.random.default_rng(2).normal(0, 2, logits.shape)  # a second, different view
    temperature = calibration.fit_temperature([logits, other], labels)
    cost = lambda t: scores.nll(calibration.probabilities([logits, other], t), labels)  # noqa: E731
    assert cost(temperature) <= min(cost(temperature * 0.97), cost(temperature * 1.03))
    assert temperature != pytest.approx(calibration.fit_temperature(logits, labels), rel=1e-3)


def overconfident_model(features=8, classes=10):
    """Dense "logits" -> softmax "probabilities" (the builders' head), its weights 4x too large."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((features,), name="pixels")
    logits = keras.layers.Dense(classes, name="logits")(inputs)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name="toy")
    true_weights = rng.normal(0, 1, (features, classes))
    model.get_layer("logits").set_weights([4 * true_weights.astype("float32"), np.zeros(classes, "float32")])
    x = rng.normal(0, 1, (6000, features)).astype("float32")
    p = np.exp(calibration._log_softmax(x @ true_weights))
    labels = (p.cumsum(axis=1) > rng.random((len(x), 1))).argmax(axis=1)
    return model, x, labels


LOAD_WITH_KERAS_ONLY = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    model = keras.saving.load_model(sys.argv[1])
    assert "cifar_keras" not in sys.modules
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
""")


def test_temperature_layer_lowers_nll_and_loads_with_plain_keras(tmp_path):
    model, x, labels = overconfident_model()
    val, test = slice(0, 3000), slice(3000, None)
    val_logits = [keras.ops.convert_to_numpy(calibration.logit_model(model).predict(x[val], verbose=0))]
    temperature = calibration.fit_temperature(val_logits, labels[val])
    assert 3 < temperature < 5  # the weights are 4x too large
    calibrated = calibration.with_temperature(model, temperature)
    assert [layer.name for layer in calibrated.layers][-2:] == ["temperature", "probabilities"]
    assert isinstance(calibrated.get_layer("temperature"), keras.layers.Rescaling)
    before, after = model.predict(x[test], verbose=0), calibrated.predict(x[test], verbose=0)
    assert scores.nll(after, labels[test]) < scores.nll(before, labels[test]) - 0.3
    assert scores.ece(after, labels[test]) < scores.ece(before, labels[test])
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()  # accuracy unchanged
    # The original model is left as it was.
    assert np.allclose(model.predict(x[test], verbose=0), before)

    calibrated.save(tmp_path / "calibrated.keras")
    np.save(tmp_path / "x.npy", x[test])
    subprocess.run([sys.executable, "-c", LOAD_WITH_KERAS_ONLY, str(tmp_path / "calibrated.keras"),
                    str(tmp_path / "x.npy"), str(tmp_path / "out.npy")], check=True, capture_output=True)
    assert np.allclose(np.load(tmp_path / "out.npy"), after, atol=1e-6)
    reloaded = keras.saving.load_model(tmp_path / "calibrated.keras")
    assert calibration.temperature_of(reloaded) == pytest.approx(temperature, rel=1e-6)


def test_a_second_temperature_multiplies_into_the_first():
    model, x, _ = overconfident_model()
    twice = calibration.with_temperature(calibration.with_temperature(model, 2.0), 1.5)
    assert [layer.name for layer in twice.layers].count("temperature") == 1
    assert calibration.temperature_of(twice) == pytest.approx(3.0)
    logits = calibration.logit_model(model).predict(x[:5], verbose=0)
    assert np.allclose(twice.predict(x[:5], verbose=0), calibration.probabilities(logits, 3.0), atol=1e-6)


@pytest.mark.parametrize("translate", [False, True])
def test_tta_model_is_calibrated_inside_and_rewrapped(tmp_path, translate):
    inner = models.cnn(widths=(8, 16, 16), stem_width=8)
    tta = models.with_tta(inner, translate=translate)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    views = calibration.model_logits(tta, images)
    assert len(views) == (8 if translate else 2)  # 6 views, the unshifted pair counted twice
    # The views' probabilities at T = 1 are what the TTA model outputs.
    assert np.allclose(calibration.probabilities(views), tta.predict(images.astype("float32"), verbose=0), atol=1e-5)
    calibrated = calibration.with_temperature(tta, 0.5)
    assert models.tta_kind(calibrated) == models.tta_kind(tta) and calibration.temperature_of(calibrated) == 0.5
    calibrated.save(tmp_path / "tta.keras")
    reloaded = keras.saving.load_model(tmp_path / "tta.keras")
    expected = calibration.probabilities(views, 0.5)
    assert np.allclose(reloaded.predict(images.astype("float32"), verbose=0), expected, atol=1e-5)
    assert not np.allclose(expected, calibration.probabilities(views), atol=1e-3)  # T = 0.5 changed something


TINY_MLP = dict(epochs=2, batch_size=50, val_size=100, precision="float32",
                model_args=dict(hidden=(32, 16), dropout=0.0))


@pytest.mark.parametrize("test_set", [True, False])
def test_fit_saves_the_calibrated_model_and_records_its_scores(data_root, tmp_path, monkeypatch, test_set):
    passes = []  # images per pass through a model while calibrating
    predict = pipeline.predict_outputs
    for module in (calibration, finalise):  # where fit's passes through the model are made
        monkeypatch.setattr(module, "predict_outputs",
                            lambda model, images, *a: passes.append(len(images)) or predict(model, images, *a))
    record = fit.fit(make_config("mlp", test_set=test_set, **TINY_MLP), data_dir=data_root, output_dir=tmp_path)
    fitted = record["calibration"]
    model = keras.saving.load_model(tmp_path / "mlp.keras")
    assert calibration.temperature_of(model) == pytest.approx(fitted["temperature"], rel=1e-5)
    assert fitted["temperature"] != pytest.approx(1.0, abs=1e-3)
    assert fitted["val"]["after"]["nll"] <= fitted["val"]["before"]["nll"]
    if not test_set:
        assert fitted["test"] is None and record["test"] is None and 200 not in passes
        return
    assert passes.count(200) == 1  # the 200 test images go through the model once
    assert record["test"]["nll"] == fitted["test"]["after"]["nll"]
    dataset = data.load(data_root)
    saved = evaluate_model(model, dataset.test, dataset.fine_to_coarse())
    assert saved["top1"] == pytest.approx(record["test"]["top1"], abs=1e-9)
    assert saved["ece"] == pytest.approx(record["test"]["ece"], abs=1e-3)


@pytest.fixture(scope="module")
def overconfident_keras_file(data_root, tmp_path_factory):
    """An MLP trained a little on the synthetic training images (right about half the time on the test images),
    its logits then multiplied by 5: far too sure of itself."""
    keras.utils.set_random_seed(0)
    train_split = data.train_val_split(data.load(data_root).train, 100)[0]
    model = models.mlp(hidden=(64,), dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(train_split.images.astype("float32"), train_split.fine, epochs=10, batch_size=100, verbose=0)
    model.get_layer("logits").set_weights([5 * w for w in model.get_layer("logits").get_weights()])
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    model.save(path)
    return path


def test_calibrate_command_writes_model_record_and_figure(overconfident_keras_file, data_root, tmp_path, capsys):
    source = overconfident_keras_file
    original = source.read_bytes()
    figure = tmp_path / "figures" / "reliability.png"
    assert cli.main(["calibrate", str(source), "--data-dir", str(data_root), "--val-size", "100",
                     "--figure", str(figure)]) == 0
    assert source.read_bytes() == original  # the input model is left as it is
    output, record_path = source.with_name("tiny_calibrated.keras"), source.parent / "calibration" / "tiny.json"
    assert str(output) in capsys.readouterr().out
    record = json.loads(record_path.read_text())
    assert record["kind"] == "calibrate" and record["val_images"] == 100 and record["test_images"] == 200
    assert 1.5 < record["temperature"] < 15 and record["temperature_before"] == 1.0 and record["figure"] == str(figure)
    for split in ("val", "test"):
        assert record[split]["after"]["nll"] < record[split]["before"]["nll"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calibrated = keras.saving.load_model(output)
    assert calibration.temperature_of(calibrated) == pytest.approx(record["temperature"], rel=1e-5)

    # evaluate reports the calibration scores of any model: here the record's "after" test scores.
    assert cli.main(["evaluate", str(output), "--data-dir", str(data_root)]) == 0
    printed = json.loads(capsys.readouterr().out)["test"]
    for key in ("ece", "nll", "brier"):
        assert printed[key] == pytest.approx(record["test"]["after"][key], abs=2e-4)

    # Calibrating the calibrated model again keeps one temperature layer, close to the same T.
    assert cli.main(["calibrate", str(output), "--data-dir", str(data_root), "--val-size", "100",
                     "--output", str(tmp_path / "again.keras"), "--record", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["temperature"] == pytest.approx(1.0, abs=0.01)
    assert again["temperature_before"] == pytest.approx(record["temperature"], rel=1e-5)


def test_calibrate_fits_on_the_split_of_the_models_record(overconfident_keras_file, data_root, tmp_path, capsys):
    """The run record beside the model (NAME.json) names its validation split; calibrate fits T on that one, whatever
    seed the run had, and refuses in one line a split this data set does not give."""
    source = tmp_path / "run.keras"
    source.write_bytes(overconfident_keras_file.read_bytes())
    # sha256 of the sorted indices of the synthetic set's 100-image split at seed 0 (commit 92cd8bf's code).
    split = {"seed": 0, "size": 100, "sha256": "33ab63df9ee05de567911d9a11a3257a9dc60948b5743371aa5213047795b90e"}
    (tmp_path / "run.json").write_text(json.dumps({"kind": "fit", "val_split": split,
                                                   "config": {"seed": 4, "val_size": 100}}))
    assert cli.main(["calibrate", str(source), "--data-dir", str(data_root), "--record", str(tmp_path / "c.json")]) == 0
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["val_images"] == 100 and record["val_split"] == split
    (tmp_path / "run.json").write_text(json.dumps({"kind": "fit", "val_split": {**split, "sha256": "0" * 64}}))
    assert cli.main(["calibrate", str(source), "--data-dir", str(data_root), "--record", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'run.json'}: its validation split (seed 0, 100 images") and err.count("\n") == 1
    assert not (tmp_path / "d.json").exists()


def test_calibrate_refuses_to_overwrite_its_input(overconfident_keras_file, data_root, capsys):
    assert cli.main(["calibrate", str(overconfident_keras_file), "--output", str(overconfident_keras_file),
                     "--data-dir", str(data_root), "--val-size", "100"]) == 2
    assert "would overwrite the model being calibrated" in capsys.readouterr().err


def test_reliability_diagram_bins_give_the_ece(tmp_path):
    from cifar_keras.reporting import plots

    share, accuracy, confidence = scores.reliability_bins(HAND_PROBABILITIES, HAND_LABELS)
    filled = share > 0
    assert share.sum() == pytest.approx(1.0) and filled.sum() == 4  # bins 6, 8, 12 and 13
    assert np.sum(share[filled] * np.abs(accuracy[filled] - confidence[filled])) == pytest.approx(
        scores.ece(HAND_PROBABILITIES, HAND_LABELS), abs=1e-12)
    plots.reliability_diagram({"a": HAND_PROBABILITIES, "b": HAND_PROBABILITIES ** 2 / 2}, HAND_LABELS,
                              tmp_path / "r.png", "hand-made")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_the_savedmodel_export_serves_calibrated_probabilities(tmp_path):
    import tensorflow as tf

    model = models.cnn(widths=(8, 16, 16), stem_width=8)
    calibrated = calibration.with_temperature(model, 0.25)
    calibrated.save(tmp_path / "tiny_calibrated.keras")
    assert cli.main(["export", str(tmp_path / "tiny_calibrated.keras"), "--root", str(tmp_path / "serving")]) == 0
    serve = tf.saved_model.load(str(tmp_path / "serving" / "tiny_calibrated" / "1")).signatures["serving_default"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    served = serve(pixels=tf.constant(pixels, tf.float32))["probabilities"].numpy()
    expected = calibration.probabilities(calibration.model_logits(model, pixels), 0.25)
    assert np.allclose(served, expected, atol=1e-5)
    assert not np.allclose(served, model.predict(pixels.astype("float32"), verbose=0), atol=1e-3)
