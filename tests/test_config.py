"""The one run schema: recipes, flags, hyperparameter files and schedules all come from RunConfig."""

import dataclasses
import json

import pytest

from cifar_keras import config
from cifar_keras.cli import app as cli_app
from cifar_keras.cli import fit as cli_fit
from cifar_keras import cli
from cifar_keras.config import FIELDS, RECIPES, RunConfig, make_config
from cifar_keras.errors import UserError

FLAG_OPTIONS = [name for name in FIELDS if name not in ("model", "model_args")]


def other_value(name):
    """A valid value of option `name` other than the cnn recipe's."""
    meta, used = FIELDS[name].metadata, {getattr(make_config("cnn"), name)}
    if meta["kind"] is bool:
        return not used.pop()
    if meta["choices"]:
        return next(c for c in meta["choices"] if c not in used)
    low = meta["low"] or 0
    candidates = [low + 0.25, low + 0.5] if meta["kind"] is float else [low + 1, low + 2, low + 3]
    return next(c for c in candidates if c not in used and (meta["high"] is None or c <= meta["high"]))


def fit_args(argv):
    return cli_app.build_parser().parse_args(["fit", "cnn", *argv])


@pytest.mark.parametrize("name", FLAG_OPTIONS)
def test_every_option_is_a_fit_flag_that_reaches_the_config(name):
    value = 16 if name == "low_res" else other_value(name)
    flag = FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")
    argv = [flag if value else flag.replace("--", "--no-", 1)] if isinstance(value, bool) else [flag, str(value)]
    # Progressive resizing's two options act only together: each is given with the other.
    companion = {"low_res": ("low_res_epochs", 1), "low_res_epochs": ("low_res", 16)}.get(name)
    if companion:
        argv += ["--" + companion[0].replace("_", "-"), str(companion[1])]
    args = fit_args(argv)
    built = make_config("cnn", **config.overrides(args, cli_fit.FIT_OPTIONS))
    assert getattr(built, name) == value
    if companion:
        assert getattr(built, companion[0]) == companion[1]
    varied = {name, *(companion[:1] if companion else ())}
    others = {k: v for k, v in built.to_dict().items() if k not in varied}
    assert others == {k: v for k, v in make_config("cnn").to_dict().items() if k not in varied}


def test_unset_flags_leave_the_recipe():
    args = fit_args([])
    assert all(value is None for value in config.overrides(args, cli_fit.FIT_OPTIONS).values())
    assert make_config("mlp", **config.overrides(args, cli_fit.FIT_OPTIONS)) == make_config("mlp")


@pytest.mark.parametrize("model", sorted(RECIPES))
def test_each_recipe_sets_every_option_and_every_builder_argument(model):
    from cifar_keras import models

    recipe = RECIPES[model]
    assert set(recipe) == set(FIELDS) and recipe["model"] == model
    builder_args = {"mlp": {"hidden", "dropout", "leaky_alpha"},
                    "cnn": {"widths", "stem_width", "depth", "dropout", "bn_momentum", "logit_scale", "stem", "dirac",
                            "whiten_eps", "data_format"}}[model]
    assert set(recipe["model_args"]) == builder_args
    assert models.check_model_args(recipe["model_args"], model, "recipe") == recipe["model_args"]
    assert all(config.check(name, value, "recipe") == value for name, value in recipe.items()
               if name not in ("model", "model_args"))
    assert make_config(model).to_dict() == recipe  # nothing else joins in


def test_the_recipes_are_the_ones_the_study_adopted():
    cnn, mlp = make_config("cnn"), make_config("mlp")
    assert (cnn.optimizer, cnn.learning_rate, cnn.epochs, cnn.ema, cnn.noise, cnn.tta, cnn.tta_translate) == (
        "muon", 0.01, 15, 0.99, 0.05, True, True)
    assert cnn.model_args == {"widths": [96, 256, 512], "stem_width": 32, "depth": 1, "dropout": 0.0,
                              "bn_momentum": 0.9, "logit_scale": 0.125, "stem": "whiten", "dirac": True,
                              "whiten_eps": 0.01, "data_format": "channels_last"}
    assert cnn.jit_compile == "auto"  # XLA on TensorFlow's CPU step: measured slower (docs/benchmarks.md)
    assert (mlp.optimizer, mlp.learning_rate, mlp.epochs, mlp.weight_decay, mlp.crop_pad, mlp.tta) == (
        "adamw", 0.002, 40, 0.05, 2, False)
    assert mlp.model_args == {"hidden": [1536, 768], "dropout": 0.3, "leaky_alpha": 0.1}
    assert RunConfig() == cnn  # the schema's defaults are the CNN's recipe


def test_a_recipe_is_not_changed_by_the_configs_made_from_it():
    make_config("cnn").model_args["widths"].append(1024)
    assert make_config("cnn").model_args["widths"] == [96, 256, 512]


def test_precedence_is_recipe_then_hyperparameters_then_flags():
    built = make_config("mlp", hparams={"learning_rate": 0.01, "epochs": 7, "model_args": {"dropout": 0.1}},
                        epochs=3, batch_size=None)
    assert built.learning_rate == 0.01  # from the hyperparameters
    assert built.epochs == 3  # a flag beats them
    assert built.batch_size == 256  # None means "not given": the recipe's
    assert built.optimizer == "adamw"  # the recipe's
    assert built.model_args == {"hidden": [1536, 768], "dropout": 0.1, "leaky_alpha": 0.1}  # merged over the recipe's
    replaced = make_config("mlp", hparams={"model_args": {"dropout": 0.1}}, model_args={"hidden": [64]})
    assert replaced.model_args == {"hidden": [64]}  # --model-args replaces them (the builder's defaults for the rest)


@pytest.mark.parametrize("hparams, message", [
    ({"batch_size": 0}, "'batch_size' must be >= 1, got 0"),
    ({"crop_pad": 2.5}, "'crop_pad' must be int, got 2.5"),
    ({"flip": "yes"}, "'flip' must be bool, got 'yes'"),
    ({"epochs": True}, "'epochs' must be int, got True"),
    ({"learning_rate": "fast"}, "'learning_rate' must be float, got 'fast'"),
    ({"label_smoothing": 1.5}, "'label_smoothing' must be in [0.0, 0.99], got 1.5"),
    ({"optimizer": "adam"}, "'optimizer' must be one of sgd, adamw, muon, got 'adam'"),
    ({"learning_rat": 0.1}, "unknown option 'learning_rat'"),
])
def test_hyperparameter_files_are_checked_against_the_schema(hparams, message, tmp_path):
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"model": "mlp", "hparams": hparams}))
    with pytest.raises(UserError) as error:
        config.read_hparams(path, "mlp")
    assert str(error.value) == f"{path}: {message}"


def test_hyperparameter_file_provenance_is_its_hash(tmp_path):
    import hashlib

    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"model": "mlp", "hparams": {"learning_rate": 1, "model_args": {"dropout": 0.2}}}))
    hparams, provenance = config.read_hparams(path, "mlp")
    assert hparams == {"learning_rate": 1.0, "model_args": {"dropout": 0.2}}
    assert isinstance(hparams["learning_rate"], float)  # JSON's 1 is a valid float option
    assert provenance == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_a_cnn_learning_rate_tuned_before_muon_keeps_the_optimizer_it_was_searched_with(tmp_path):
    """An old file's learning rate of 0.2 is SGD's; with Muon it would diverge."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"model": "cnn", "hparams": {"learning_rate": 0.2, "batch_size": 256}}))
    new.write_text(json.dumps({"model": "cnn", "hparams": {"optimizer": "muon", "learning_rate": 0.02}}))
    assert config.RECIPES["cnn"]["optimizer"] == "muon"
    assert config.make_config("cnn", hparams=config.read_hparams(old, "cnn")[0]).optimizer == "sgd"
    assert config.make_config("cnn", hparams=config.read_hparams(new, "cnn")[0]).learning_rate == 0.02
    untuned_lr = tmp_path / "batch.json"
    untuned_lr.write_text(json.dumps({"model": "cnn", "hparams": {"batch_size": 128}}))
    assert config.make_config("cnn", hparams=config.read_hparams(untuned_lr, "cnn")[0]).optimizer == "muon"


def test_fit_help_groups_the_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    help_text = capsys.readouterr().out
    positions = [help_text.index(f"\n{title}:\n") for title in config.GROUPS.values()]
    assert positions == sorted(positions)
    section = help_text[positions[3]:positions[4]]  # augmentation
    assert "--crop-pad" in section and "--cutout" in section and "--lr" not in section
    assert "mlp 40, cnn 15" in help_text  # each model's recipe is shown
    order = " ".join(help_text.split())  # the description says what wins: recipe, then tuned file, then flags
    assert "the recipe (MODEL's every option and builder argument, in cifar_keras/recipes.py) -> the tuned file " \
           "(tuning/MODEL/best_hparams.json, or --hparams) -> the flags" in order


def test_config_is_immutable_and_serialisable():
    built = make_config("cnn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.epochs = 3
    assert json.loads(json.dumps(built.to_dict())) == built.to_dict()


def test_an_old_records_config_is_read_in_todays_schema():
    old = {"model": "cnn", "model_args": {}, "epochs": 8, "warmup_epochs": 2, "batch_size": 256, "tta": False}
    upgraded = config.upgrade(old)
    assert upgraded["warmup"] == 0.25  # 2 of 8 epochs
    assert "warmup_epochs" not in upgraded and set(upgraded) == set(FIELDS)
    assert upgraded["epochs"] == 8 and upgraded["tta"] is False and upgraded["model_args"] == {}
    # Options it lacks ran at the defaults of before the recipes were written out, not at today's CNN recipe.
    lacked = (upgraded["ema"], upgraded["noise"], upgraded["optimizer"], upgraded["learning_rate"])
    assert lacked == (0.0, 0.0, "sgd", 0.2)
    assert config.upgrade({})["tta_translate"] is False and config.upgrade({})["label_smoothing"] == 0.2
    assert set(config.RECORD_DEFAULTS) == set(FIELDS)  # a new option says what older runs ran at
