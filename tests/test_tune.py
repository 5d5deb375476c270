"""Tiny KerasTuner searches on synthetic data, and fit reusing their result."""

import json

import pytest

from cifar_keras import config
from cifar_keras import cli
from cifar_keras import models
from cifar_keras.training import optimizers
from cifar_keras.search import tune
from cifar_keras.errors import UserError

TINY = ["--train-size", "300", "--val-size", "100", "--precision", "float32"]


def search(data_root, folder, kind, *extra):
    argv = ["tune", "mlp", "--tuner", kind, "--max-trials", "2", "--epochs", "1", "--max-epochs", "2",
            *TINY, "--data-dir", str(data_root), "--tuning-dir", str(folder), *extra]
    assert cli.main(argv) == 0
    return (json.loads((folder / "mlp" / name).read_text()) for name in ("best_hparams.json", "trials.json"))


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_search_writes_summary_and_best_hparams(kind, data_root, tmp_path):
    best, trials = search(data_root, tmp_path, kind)
    done = [t for t in trials if t["status"] == "COMPLETED"]
    assert len(done) >= 2 if kind != "hyperband" else len(done) >= 1
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in done)
    best_trial = next(t for t in trials if t["trial_id"] == best["trial_id"])
    assert best["hparams"]["learning_rate"] == best_trial["hyperparameters"]["learning_rate"]
    assert best["hparams"]["model_args"]["hidden"] == [best_trial["hyperparameters"]["hidden1"],
                                                       best_trial["hyperparameters"]["hidden2"]]
    record = json.loads((tmp_path / "mlp" / "search.json").read_text())
    assert record["kind"] == "tune" and record["tuner"] == kind and record["train_images"] == 300


def test_rerun_continues_without_redoing_trials(data_root, tmp_path, monkeypatch):
    _, first = search(data_root, tmp_path, "random")
    builds = []
    original = tune.CifarHyperModel.build
    monkeypatch.setattr(tune.CifarHyperModel, "build", lambda self, hp: builds.append(1) or original(self, hp))
    _, again = search(data_root, tmp_path, "random")
    assert builds == [] and again == first
    times = json.loads((tmp_path / "mlp" / "search.json").read_text())
    assert times["search_wall_time_s"] > times["run_wall_time_s"]  # accumulated over both runs
    _, more = search(data_root, tmp_path, "random", "--max-trials", "3")
    assert len(builds) == 1 and len(more) == 3 and more[:2] == first


def test_fit_uses_best_hparams_and_flags_override(data_root, tmp_path, monkeypatch):
    hparams = {"model": "mlp", "hparams": {"model_args": {"hidden": [40, 24]}, "learning_rate": 0.004,
                                           "batch_size": 60}}
    folder = tmp_path / "tuning" / "mlp"
    folder.mkdir(parents=True)
    (folder / "best_hparams.json").write_text(json.dumps(hparams))
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "mlp", "--epochs", "1", "--val-size", "100", "--batch-size", "50", "--precision", "float32",
            "--data-dir", str(data_root), "--output-dir", "out"]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "out" / "mlp.json").read_text())
    assert record["hparams_file"] == "tuning/mlp/best_hparams.json"
    assert record["config"]["model_args"]["hidden"] == [40, 24] and record["config"]["learning_rate"] == 0.004
    assert record["config"]["batch_size"] == 50  # the flag wins
    # Bias-free hidden layers, each with BatchNorm (gamma, beta, moving mean and variance).
    assert record["params"] == 3072 * 40 + 40 * 24 + (24 * 100 + 100) + 4 * (40 + 24)
    assert cli.main([*argv, "--hparams", "none", "--overwrite"]) == 0
    record = json.loads((tmp_path / "out" / "mlp.json").read_text())
    recipe = json.loads(json.dumps(config.make_config("mlp").model_args))  # the recipe's, not the tuned file's
    assert record["hparams_file"] is None and record["config"]["model_args"] == recipe
    assert record["config"]["model_args"]["hidden"] != [40, 24]


@pytest.mark.parametrize("content, message", [
    ("{broken", "not valid JSON"),
    (json.dumps({"model": "mlp"}), "no 'hparams' object"),
    (json.dumps({"model": "cnn", "hparams": {}}), "are for 'cnn', not 'mlp'"),
    (json.dumps({"hparams": {"learning_rat": 0.1}}), "unknown option 'learning_rat'"),
    (json.dumps({"hparams": {"model_args": [3]}}), "'model_args' must be an object"),
    (json.dumps({"hparams": {"learning_rate": "fast"}}), "'learning_rate' must be float, got 'fast'"),
    (json.dumps({"hparams": {"batch_size": 0}}), "'batch_size' must be >= 1, got 0"),
    (json.dumps({"hparams": {"crop_pad": 2.5}}), "'crop_pad' must be int, got 2.5"),
])
def test_invalid_hparams_file_is_a_clear_error(content, message, tmp_path):
    path = tmp_path / "best_hparams.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        config.read_hparams(path, "mlp")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unknown_model_args_in_hparams_file_stop_fit_with_one_line(data_root, tmp_path, capsys):
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"model": "mlp", "hparams": {"model_args": {"hidden": [8], "depth": 3}}}))
    argv = ["fit", "mlp", "--hparams", str(path), "--epochs", "1", "--val-size", "100", "--precision", "float32",
            "--data-dir", str(data_root), "--output-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: unknown model_args for mlp: depth"]
    assert not (tmp_path / "out" / "mlp.json").exists()  # stopped before training


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_search_space_defaults_are_the_built_in_recipe(model):
    import dataclasses
    import inspect

    import keras_tuner

    spec, hp = models.get_spec(model), keras_tuner.HyperParameters()
    space = spec.space(hp)
    found = config.make_config(model, hparams=space)
    recipe = config.make_config(model)
    assert isinstance(found, config.RunConfig) and isinstance(recipe, config.RunConfig)
    builder = {k: p.default for k, p in inspect.signature(spec.build).parameters.items()}
    # The space sets builder arguments at the recipe's values (the builder's defaults unless the recipe sets them).
    expected = {**builder, **recipe.model_args}
    searched = set(space["model_args"])  # the builder arguments the space varies
    assert searched and searched <= set(builder)
    for key, value in found.model_args.items():
        assert list(value) == list(expected[key]) if isinstance(value, (list, tuple)) else value == expected[key]
    assert dataclasses.replace(found, model_args={}) == dataclasses.replace(recipe, model_args={})


def test_budget_epochs_is_the_nearest_whole_number_or_what_fits():
    from cifar_keras.training.budget import epochs_in_budget

    assert epochs_in_budget(60, 10, within=False) == 6  # 6000 images in a minute: six epochs of 1000
    assert epochs_in_budget(60, 1000 / 124, within=False) == 7  # 7.44: nearest
    assert epochs_in_budget(60, 1000 / 124) == 7 and epochs_in_budget(60, 1000 / 130) == 7  # 7.8: 7 fit
    assert epochs_in_budget(1, 10) == 1 and epochs_in_budget(1, 10, within=False) == 1  # never less than one


def test_budgeted_search_starts_from_the_recipe_and_sizes_epochs_by_speed(data_root, tmp_path):
    import keras_tuner

    from cifar_keras import data
    from cifar_keras import models
    from cifar_keras.training.budget import epochs_in_budget

    subset = 100  # training images of each trial: one batch (the fewer, the cheaper its budgeted epochs)
    best, trials = search(data_root, tmp_path, "random", "--budget", "recipe", "--train-size", str(subset))
    recipe = keras_tuner.HyperParameters()
    models.mlp_space(recipe)
    assert trials[0]["hyperparameters"] == recipe.values  # the built-in recipe is trial 0
    assert trials[1]["hyperparameters"] != recipe.values
    record = json.loads((tmp_path / "mlp" / "search.json").read_text())
    assert record["budget"]["of"] == "recipe" and record["budget"]["recipe_epochs"] == 40
    full_train = len(data.load(data_root).train) - 100
    trial_s = 60 * record["budget"]["budget_minutes"] * subset / full_train
    for trial in trials:
        assert trial["epochs"] == epochs_in_budget(trial_s, subset / trial["train_images_per_s"], within=False)
    assert best["hparams"]["epochs"] == next(t["epochs"] for t in trials if t["trial_id"] == best["trial_id"])
    assert best["budget"] == record["budget"]


def test_budget_needs_a_tuner_that_lets_trials_set_their_epochs(data_root, tmp_path, capsys):
    argv = ["tune", "mlp", "--tuner", "hyperband", "--budget", "10", *TINY, "--data-dir", str(data_root),
            "--tuning-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "--budget sets each trial's epochs itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["tune", "mlp", "--budget", "soon"])
    assert "must be 'recipe' or a positive number of minutes" in capsys.readouterr().err


def test_a_continued_hyperband_trial_does_not_warm_up_again(data_root):
    """Hyperband continues a trial at `initial_epoch`: the schedule must go on from there, not restart."""
    import keras
    import keras_tuner
    import numpy as np

    from cifar_keras import data
    from cifar_keras.data.pipeline import make_dataset

    dataset = data.load(data_root)
    train_split, val_split = dataset.train.take(np.arange(200)), dataset.train.take(np.arange(200, 300))
    # Half of the two epochs is warm-up, so a restarted schedule would start at a learning rate of 0.
    hypermodel = tune.CifarHyperModel("mlp", train_split, batch_size=50, warmup=0.5, model_args={"hidden": [16]},
                                      precision="float32")
    hp = keras_tuner.HyperParameters()
    hypermodel.space(hp)
    hp.values["tuner/epochs"], hp.values["tuner/initial_epoch"] = 2, 1  # as Hyperband sets them
    trial_config = hypermodel.config(hp)
    assert trial_config.epochs == 2 and trial_config.batch_size == 50
    steps = hypermodel.steps(trial_config)
    assert steps == 4
    model = hypermodel.build(hp)
    assert [l.units for l in model.layers if isinstance(l, keras.layers.Dense)] == [16, 100]  # tiny

    class Seen(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.iterations, self.learning_rates = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self.iterations.append(int(self.model.optimizer.iterations.numpy()))
            self.learning_rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    seen = Seen()
    hypermodel.fit(hp, model, epochs=2, initial_epoch=1, validation_data=make_dataset(val_split, 100),
                   callbacks=[seen], verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2 * steps  # one epoch trained, on top of the inherited one
    assert seen.iterations == list(range(steps, 2 * steps))
    peak = trial_config.learning_rate
    schedule = optimizers.make_schedule(trial_config, steps)  # what hypermodel.build compiled the model with
    assert float(schedule(0)) == 0.0 and float(schedule(steps)) == pytest.approx(peak)  # the warm-up's start and end
    assert seen.learning_rates[0] == pytest.approx(peak)  # where the first epoch left the schedule, not 0
    # Then the cosine decay, step by step, towards zero at the trial's end.
    assert seen.learning_rates == pytest.approx([float(schedule(i)) for i in range(steps, 2 * steps)])
    assert (np.diff(seen.learning_rates) < 0).all() and seen.learning_rates[-1] > 0
