"""The one schema of a training run: every option with its type, range, default and help.

`fit`'s and `tune`'s flags, the checks on `--hparams` files and the `config` block of a run
record all come from `RunConfig`. Each model's recipe sets every option, in recipes.py; the
defaults here are the CNN's. Adding an option means adding one field here, its value to each
recipe, and the value that reproduces older runs to `RECORD_DEFAULTS`.

This module imports no Keras, so `--help` stays fast.
"""

import argparse
import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from cifar_keras.errors import UserError
from cifar_keras.recipes import CNN, RECIPES

PRECISIONS = ("auto", "float32", "bfloat16", "float16")

# fit --help shows the options in these groups, in this order.
GROUPS = {"data": "data", "model": "model and recipe", "schedule": "schedule",
          "augmentation": "augmentation", "hardware": "hardware", "output": "output"}


def option(default, group, help, *, kind=None, low=None, high=None, choices=None, flag=None):
    """A RunConfig field: `kind` is its type (default: the type of `default`), [`low`, `high`] its range."""
    kind = kind or type(default)
    return field(default=default, metadata=dict(group=group, help=help, kind=kind, low=low, high=high,
                                                choices=choices, flag=flag))


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a `fit` run trains and how (not where its files go)."""

    model: str = option(CNN["model"], "model", "registered model to train", choices=tuple(RECIPES))
    model_args: dict = field(default_factory=lambda: copy.deepcopy(CNN["model_args"]),
                             metadata=dict(group="model", help="builder keyword arguments"))
    label_smoothing: float = option(CNN["label_smoothing"], "model", "label smoothing of the cross-entropy",
                                    low=0.0, high=0.99)
    tta: bool = option(CNN["tta"], "model", "save the model averaged over each image and its mirror image "
                       "(flip test-time augmentation; doubles inference cost, not training cost)")
    tta_translate: bool = option(CNN["tta_translate"], "model", "with --tta, also average over the image shifted "
                                 "one pixel up-left and down-right, each with its mirror (airbench's TTA: 6 views, "
                                 "3x the inference cost of flip TTA)")

    epochs: int = option(CNN["epochs"], "schedule", "training epochs", low=1)
    batch_size: int = option(CNN["batch_size"], "schedule", "images per step (per replica with --distribute)",
                             low=1)
    optimizer: str = option(CNN["optimizer"], "schedule", "sgd (Nesterov momentum 0.9), adamw, or muon (Muon on "
                            "the convolution kernels, AdamW on the rest)", choices=("sgd", "adamw", "muon"))
    learning_rate: float = option(CNN["learning_rate"], "schedule", "peak learning rate (per replica)", low=0.0,
                                  flag="--lr")
    weight_decay: float = option(CNN["weight_decay"], "schedule",
                                 "decoupled weight decay (not on BatchNorm or biases)", low=0.0)
    warmup: float = option(CNN["warmup"], "schedule", "linear warm-up, as a fraction of the run's steps",
                           low=0.0, high=1.0)
    decay: str = option(CNN["decay"], "schedule", "shape of the learning rate's decay to zero after the warm-up",
                        choices=("cosine", "linear"))
    patience: int = option(CNN["patience"], "schedule", "stop after N epochs without validation gain (0: never)",
                           low=0)
    ema: float = option(CNN["ema"], "schedule", "decay per step of a moving average of the weights (BatchNorm "
                        "statistics included); the saved model takes the average if it scores higher on validation "
                        "(0: off)", low=0.0, high=0.9999)
    low_res: int = option(CNN["low_res"], "schedule", "progressive resizing: train the first --low-res-epochs "
                          "epochs on images downscaled to LOW_RES x LOW_RES pixels (a convolutional model's compute "
                          "falls with the pixels); the later epochs, validation and the saved model use 32 x 32 "
                          "(0: off)", low=0, high=31)
    low_res_epochs: int = option(CNN["low_res_epochs"], "schedule", "epochs at --low-res size, fewer than --epochs",
                                 low=0)
    time_budget: float = option(CNN["time_budget"], "schedule", "minutes for the whole command (start-up, "
                                "training, validation, TTA, calibration, test, saving): times the first training and "
                                "inference steps on this machine, then sets --epochs (and so the schedule) to fit; for the cnn "
                                "also the test-time views (at most those --tta asks for), the pair the recipe study "
                                "expects to score best in that time",
                                kind=float, low=0.1)

    crop_pad: int = option(CNN["crop_pad"], "augmentation", "random-crop padding in pixels (0: no crop)",
                           low=0, high=16)
    flip: bool = option(CNN["flip"], "augmentation", "random horizontal flips")
    cutout_size: int = option(CNN["cutout_size"], "augmentation", "cutout square side in pixels (0: off)",
                              low=0, high=32, flag="--cutout")
    noise: float = option(CNN["noise"], "augmentation", "Gaussian pixel noise on a random half of the training "
                          "images, standard deviation uniform in [0, NOISE] x 255 (robustness to noisy photos; "
                          "0: off)", low=0.0, high=0.5)
    jpeg: int = option(CNN["jpeg"], "augmentation", "re-encode a random half of the training images as JPEG, each "
                       "at a quality drawn uniformly from [JPEG, 95] (robustness to compressed photos; 0: off)",
                       low=0, high=95)

    seed: int = option(CNN["seed"], "data", "seed of the initialisation, the batches and the --train-size subset (the validation split has its own fixed seed, 0)",
                       low=0)
    val_size: int = option(CNN["val_size"], "data", "validation images carved (stratified) from the training set",
                           low=100)
    train_size: int = option(CNN["train_size"], "data", "train on a stratified subset of N images (default: all "
                             "the rest)", kind=int, low=100)
    test_set: bool = option(CNN["test_set"], "data", "evaluate the selected model once on the test set (--no-test: "
                            "judge on validation only, for recipe studies)", flag="--test")

    precision: str = option(CNN["precision"], "hardware", "auto: bfloat16 on CPUs with AMX, float16 on GPUs, on CPUs "
                            "with AVX512-BF16 and no AMX the faster of float32 and bfloat16 in a short probe (fit), "
                            "else float32", choices=PRECISIONS)
    jit_compile: str = option(CNN["jit_compile"], "hardware", "XLA compilation of the training step (Keras' "
                              "jit_compile): auto lets Keras choose (off on TensorFlow without a GPU, on with JAX), on, "
                              "or off", choices=("auto", "on", "off"))
    distribute: str = option(CNN["distribute"], "hardware", "mirrored: synchronous data parallelism over this "
                             "machine's devices (TensorFlow MirroredStrategy, JAX DataParallel); multiworker: over "
                             "the devices of several processes or machines (JAX's distributed runtime, "
                             "KERAS_BACKEND=jax; see the cluster options, or `launch`); batch size and learning rate "
                             "are per replica", choices=("none", "mirrored", "multiworker"))

    def to_dict(self):
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
DEFAULTS = RunConfig()

MODEL_NAMES = tuple(RECIPES)

# What an option missing from a run record's `config` ran at: RunConfig's defaults before the recipes were
# written out (older records lack the options added since; each ran at its default of the time, its "off").
# Frozen: a record's partial `model_args` complete with the builder's own defaults, which do not change.
RECORD_DEFAULTS = dict(
    model="cnn", model_args={}, label_smoothing=0.2, tta=False, tta_translate=False, epochs=15, batch_size=256,
    optimizer="sgd", learning_rate=0.2, weight_decay=5e-4, warmup=2 / 15, decay="cosine", patience=0, ema=0.0,
    low_res=0, low_res_epochs=0, time_budget=None, crop_pad=4, flip=True, cutout_size=0, noise=0.0, jpeg=0, seed=0,
    val_size=5000, train_size=None, test_set=True, precision="auto", jit_compile="auto", distribute="none")
# Tuned files that do not name their optimizer were searched before the CNN's recipe moved to Muon, with SGD.
SEARCHED_BEFORE_MUON = {"cnn": "sgd"}


def check(name, value, where):
    """`value` for option `name` if it has the right type and range, else a one-line UserError."""
    if name not in FIELDS or name in ("model", "model_args"):  # the model is chosen on the command line
        raise UserError(f"{where}: unknown option '{name}'")
    meta = FIELDS[name].metadata
    kind, low, high, choices = meta["kind"], meta["low"], meta["high"], meta["choices"]
    if value is None and FIELDS[name].default is None:
        return None
    # JSON has one number type: a float option takes an int, an int option takes no 2.5 (and no bool).
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: '{name}' must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UserError(f"{where}: '{name}' must be a finite number, got {value!r}")
    if choices and value not in choices:
        raise UserError(f"{where}: '{name}' must be one of {', '.join(choices)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(f"{where}: '{name}' must be {bounds}, got {value!r}")
    return value


def make_config(model, hparams=None, **overrides):
    """RunConfig of `model`: its recipe (recipes.py), then tuned `hparams`, then non-None `overrides`.

    Builder arguments (`model_args`) of tuned hyperparameters are merged over the recipe's; given as an
    override they replace them (all of the builder's other arguments at their defaults)."""
    if model not in RECIPES:
        raise UserError(f"unknown model '{model}': choose one of {', '.join(MODEL_NAMES)}")
    values = copy.deepcopy(RECIPES[model])
    model_args = values.pop("model_args")
    model_args.update((hparams or {}).get("model_args", {}))
    if overrides.get("model_args") is not None:
        model_args = dict(overrides["model_args"])
    for source, updates in (("hyperparameters", hparams or {}), ("options", overrides)):
        for name, value in updates.items():
            if name != "model_args" and value is not None:
                values[name] = check(name, value, source)
    return check_low_res(RunConfig(**values, model_args=model_args))


def check_low_res(config):
    """`config` if its progressive-resizing options agree with each other and with its epochs."""
    if config.low_res_epochs and not config.low_res:
        raise UserError("options: --low-res-epochs needs --low-res SIZE")
    if config.low_res and config.low_res < 8:  # the CNN halves its images three times
        raise UserError(f"options: --low-res must be 0 (off) or from 8 to 31 pixels, got {config.low_res}")
    if config.low_res and not 0 < config.low_res_epochs < config.epochs:
        raise UserError(f"options: with --low-res, --low-res-epochs must be from 1 to {config.epochs - 1} "
                        f"(fewer than the {config.epochs} epochs: the last ones train at 32 x 32), "
                        f"got {config.low_res_epochs}")
    return config


def upgrade(recorded):
    """A run record's `config` block in today's schema: older records had a warm-up in epochs, and lack
    options added since, which ran at their default of the time (`RECORD_DEFAULTS`)."""
    recorded = dict(recorded)
    if "warmup_epochs" in recorded:
        recorded["warmup"] = recorded.pop("warmup_epochs") / recorded["epochs"]
    return {name: recorded.get(name, RECORD_DEFAULTS[name]) for name in FIELDS}


def same_value(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    return a == b


def read_hparams(path, model):
    """(hparams, provenance) of a best_hparams.json written by `tune`, every value checked."""
    from cifar_keras import records

    content = records.read(path)
    hparams = content.get("hparams") if isinstance(content, dict) else None
    if not isinstance(hparams, dict):
        raise UserError(f"{path}: no 'hparams' object")
    if content.get("model", model) != model:
        raise UserError(f"{path}: hyperparameters are for '{content['model']}', not '{model}'")
    if not isinstance(hparams.get("model_args", {}), dict):
        raise UserError(f"{path}: 'model_args' must be an object")
    checked = {name: check(name, value, path) for name, value in hparams.items() if name != "model_args"}
    if "learning_rate" in checked and "optimizer" not in checked and model in SEARCHED_BEFORE_MUON:
        checked["optimizer"] = SEARCHED_BEFORE_MUON[model]  # its learning rate is that optimizer's
    provenance = {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    return {**checked, "model_args": hparams.get("model_args", {})}, provenance


# --- command-line flags, generated from the fields ---------------------------------------------

def parse_value(name):
    """argparse `type` for option `name`: converts the text, then applies `check`."""
    kind = FIELDS[name].metadata["kind"]

    def parse(text):
        try:
            return check(name, kind(text), "option")
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).split(f"'{name}' ", 1)[-1]) from None

    return parse


def recipe_values(name):
    values = {model: RECIPES[model][name] for model in MODEL_NAMES}
    if len(set(map(repr, values.values()))) == 1:
        return f"default: {next(iter(values.values()))}"
    return "default: " + ", ".join(f"{model} {value:g}" if isinstance(value, float) else f"{model} {value}"
                                   for model, value in values.items())


def flag_of(name):
    """The command-line flag of option `name`."""
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def add_run_options(parser, groups, names):
    """Flags for the RunConfig fields `names` in their `groups` (argparse groups by key); all default to None,
    so an unset flag leaves the recipe (or the tuned hyperparameters) as they are."""
    for name in names:
        meta = FIELDS[name].metadata
        flag = flag_of(name)
        default = FIELDS[name].default
        help_text = meta["help"] if default is None else f"{meta['help']} ({recipe_values(name)})"
        if meta["kind"] is bool:
            groups[meta["group"]].add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                               default=None, help=help_text)
        else:
            metavar = "|".join(meta["choices"]) if meta["choices"] else name.upper()
            groups[meta["group"]].add_argument(flag, dest=name, type=parse_value(name), default=None,
                                               metavar=metavar, help=help_text)


def add_groups(parser):
    return {key: parser.add_argument_group(title) for key, title in GROUPS.items()}


def overrides(args, names):
    return {name: getattr(args, name) for name in names}
