"""`python -m cifar_keras.deploy.verify FORMAT PATH PIXELS.npy OUT.npy`: an export's probabilities on saved
pixels, computed in this (fresh) process by the format's own runtime alone, with runtimes.py's loader.

`export` runs it after writing a model, to compare with the .keras model (export.verify). It writes the
probabilities to OUT.npy and prints one JSON line {"runtime": ..., "format": ..., "precision": ...}. It fails
(exit code 1) if PATH is not a FORMAT model, or if an onnx, litert or openvino model got TensorFlow, Keras,
JAX or PyTorch imported: those exports must run with their runtime alone.
"""

import json
import sys

import numpy as np

from cifar_keras.deploy import runtimes
from cifar_keras.errors import UserError

FRAMEWORKS = ("tensorflow", "keras", "jax", "torch")


def foreign_frameworks(fmt):
    """The frameworks this process imported that the runtime of `fmt` does not need. TensorFlow, the
    SavedModel's runtime, imports Keras (and JAX, where installed) itself."""
    own = runtimes.RUNTIMES[fmt][0]
    if own in FRAMEWORKS:
        return []
    return [name for name in FRAMEWORKS if name in sys.modules]


def main(argv):
    fmt, path, pixels_file, out_file = argv
    predictor = runtimes.load(path)
    if predictor.format != fmt:
        raise UserError(f"{path}: format {predictor.format}, not {fmt}")
    probabilities = predictor(np.load(pixels_file))
    foreign = foreign_frameworks(fmt)
    if foreign:
        raise UserError(f"{path}: running the {fmt} model imported {', '.join(foreign)}")
    np.save(out_file, probabilities)
    print(json.dumps({"runtime": predictor.runtime, "format": predictor.format, "precision": predictor.precision}))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
