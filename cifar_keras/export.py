"""`export`: a trained .keras model as a SavedModel in TF Serving's layout, NAME/VERSION/.

The `serving_default` signature takes `pixels`, a float32 batch (None, 32, 32, 3) of raw RGB
values in 0-255 (no normalisation needed), and returns `probabilities` (None, 100),
`top5_classes` (None, 5, int32) and `top5_probabilities` (None, 5). Class names ship in
`assets.extra/labels.txt` (line i names class i), which TF Serving ignores.
"""

from pathlib import Path

import keras

from cifar_keras.classes import FINE_NAMES
from cifar_keras.errors import UserError

LABELS_FILE = Path("assets.extra") / "labels.txt"


def next_version(base):
    """One more than the highest numeric version folder under `base` (1 if none)."""
    versions = [int(p.name) for p in Path(base).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def serving_fn(model):
    def serve(pixels):
        probabilities = model(keras.ops.cast(pixels, "float32"), training=False)
        # argsort rather than top_k: JAX lowers top_k to a StableHLO composite that
        # TensorFlow's loader may be too old to read.
        top5_classes = keras.ops.argsort(-probabilities, axis=-1)[:, :5]
        top5_probabilities = keras.ops.take_along_axis(probabilities, top5_classes, axis=-1)
        return {"probabilities": probabilities, "top5_classes": keras.ops.cast(top5_classes, "int32"),
                "top5_probabilities": top5_probabilities}

    return serve


def export_model(model, root, name, version=None):
    """Write root/name/version/ (SavedModel + labels); return that folder."""
    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise UserError(f"SavedModel export needs the tensorflow or jax backend, not {keras.backend.backend()} "
                        "(set KERAS_BACKEND=tensorflow)")
    base = Path(root) / name
    version = version or next_version(base)
    target = base / str(version)
    if target.exists():
        raise UserError(f"{target}: version {version} already exists; pick another --version")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_fn(model),
                         input_signature=[keras.InputSpec(shape=(None, 32, 32, 3), dtype="float32", name="pixels")])
    archive.write_out(str(target), verbose=False)
    labels = target / LABELS_FILE
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(FINE_NAMES) + "\n")
    return target
