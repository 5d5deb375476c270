"""The one model registry (builder and search space by name) and the loader of saved .keras models."""

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import keras

from cifar_keras.errors import UserError
from cifar_keras.models.builders import cnn, mlp
from cifar_keras.models.spaces import cnn_space, mlp_space


@dataclass
class ModelSpec:
    """A builder and its KerasTuner search space (the training recipe, builder arguments included, is in recipes.py)."""

    build: callable
    space: callable = None


MODELS = {"mlp": ModelSpec(mlp, mlp_space), "cnn": ModelSpec(cnn, cnn_space)}


def get_spec(name):
    if name not in MODELS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(MODELS)}")
    return MODELS[name]


def full_model_args(name, model_args):
    """`model_args` completed with the builder's defaults (lists for tuples, as in JSON): what the model
    `name` is built with. Two sets of builder arguments build the same model if their full forms are equal."""
    defaults = {arg: p.default for arg, p in inspect.signature(get_spec(name).build).parameters.items()
                if arg != "num_classes"}
    return json.loads(json.dumps({**defaults, **model_args}))


def check_model_args(model_args, name, where):
    """`model_args` if every key is an argument of the model's builder, else a one-line UserError."""
    builder_args = set(inspect.signature(get_spec(name).build).parameters)
    unknown = sorted(set(model_args) - (builder_args - {"num_classes"}))  # the data set fixes the classes
    if unknown:
        raise UserError(f"{where}: unknown model_args for {name}: {', '.join(unknown)}")
    try:  # values too: a wrong one fails here, in one line, not after the data has loaded
        get_spec(name).build(**model_args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: model_args {model_args} do not build a {name} ({str(e).splitlines()[0][:160]})") from None
    return model_args


def load_keras_model(path):
    """A saved .keras model, uncompiled; one-line errors for a missing or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model file not found")
    if path.suffix != ".keras":
        raise UserError(f"{path}: expected a .keras model file")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # zip, h5 and config errors all land here
        raise UserError(f"{path}: cannot load model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
