"""Helpers that several commands share: argparse types, the data options (--data-dir, the validation split),
option checks, run records and where they go by default."""

import argparse
import json
import shlex
from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras.errors import UserError


def positive(kind, message):
    """argparse `type`: a number of `kind` above zero, else `message`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value

    return parse


positive_int = positive(int, "must be a positive integer")
positive_seconds = positive(float, "must be a positive number of seconds")


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_data_dir(parser):
    parser.add_argument("--data-dir", help="folder holding cifar-100-python/ or cifar-100-python.tar.gz, which "
                        "are downloaded into it (md5-checked) when it holds neither (default: $CIFAR100_DATA_DIR, "
                        "else the Keras cache)")


def add_validation_split(parser):
    """--val-size and --seed: the validation split that fit carves from the training set. Unset (None), they
    defer to the run record beside the model (data.model_validation_split)."""
    run_config.add_run_options(parser, {"data": parser}, ["val_size", "seed"])
    parser.set_defaults(val_size=None, seed=None)


def validation_split(dataset, args):
    """(validation Split, its description) of the model at args.model_path: the split of its run record NAME.json
    beside it, else --val-size images of fit's fixed split (data.model_validation_split)."""
    from cifar_keras import data

    return data.model_validation_split(dataset.train, args.model_path, args.val_size, args.seed)


def reject_without(needed, options):
    """For options given without the one they need (`needed`): a one-line error naming the first of `options`
    ((flag, value) pairs) that is set."""
    given = [flag for flag, value in options if value is not None]
    if given:
        raise UserError(f"{given[0]} needs {needed}")


def command_line(argv):
    return "python -m cifar_keras " + shlex.join(argv)


def run_record(kind, argv, **fields):
    """A run record of `kind`: `fields`, the command line that produced it, the code version and the environment
    (hardware, backend, versions); `fields` take precedence over the environment's."""
    from cifar_keras import hardware, records

    environment = {key: value for key, value in hardware.environment().items() if key not in fields}
    return {"kind": kind, "command": command_line(argv), **fields, "code": records.code_version(), **environment}


def record_beside(model_path, folder):
    """The default record path of a model's analysis: FOLDER/NAME.json beside the model file."""
    model_path = Path(model_path)
    return model_path.parent / folder / f"{model_path.stem}.json"


def comma_list(flag, text, allowed):
    """The values of a comma-separated option, each one of `allowed`; a one-line error otherwise."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    wrong = sorted(set(values) - set(allowed))
    if wrong or not values:
        raise UserError(f"{flag}: unknown {', '.join(wrong) or 'empty list'}; choose from {', '.join(allowed)}")
    return values
