"""Test-time augmentation: flip (2 views) and flip + translate (6 views) wrappers around a trained model,
built from built-in Keras layers so the saved model loads without this package."""

import keras
import numpy as np
from keras import layers


def tta_views(translate=False):
    """The views test-time augmentation averages, as (rows, columns, count): 0/1 matrices that move the
    pixels along the height and the width (out[j] = in[i] where matrix[i, j] = 1; None: unchanged), and
    how many times the view counts in an equal average. Flip TTA: the image and its mirror. With
    `translate` (airbench's TTA), the image shifted one pixel up-left and one pixel down-right
    (reflect-padded), each with its mirror, join them: the unshifted pair weighs half, each shifted
    pair a quarter."""
    mirror = np.eye(32, dtype="float32")[::-1]
    if not translate:
        return [(None, None, 1), (None, mirror, 1)]
    views = [(None, None, 2), (None, mirror, 2)]
    for step in (-1, 1):
        source = np.abs(np.arange(32) + step)  # reflect at the edges: -1 -> 1, 32 -> 30
        source = np.where(source > 31, 62 - source, source)
        shift = np.zeros((32, 32), "float32")
        shift[source, np.arange(32)] = 1.0
        views += [(shift, shift, 1), (shift, shift @ mirror, 1)]
    return views


def move_pixels(images, rows, columns):
    """What a view of `tta_views` sees of (N, 32, 32, C) `images` (numpy, for calibration)."""
    if rows is not None:
        images = images[:, rows.argmax(0)]
    if columns is not None:
        images = images[:, :, columns.argmax(0)]
    return np.ascontiguousarray(images)


def with_tta(model, translate=False):
    """`model` averaged over the views of `tta_views` (test-time augmentation): flip TTA, or
    with `translate` flip-and-translate TTA (6 passes of `model`, 3x flip TTA's inference cost).

    Each view moves the pixels with fixed 0/1 Dense layers along the width and the height:
    built-in layers only, so the saved model still loads without this package.
    """
    inputs = keras.Input((32, 32, 3), name="pixels")
    outputs = []
    for k, (rows, columns, count) in enumerate(tta_views(translate)):
        x = inputs
        # Permute brings the moved axis last, where Dense acts; the same Permute puts it back.
        for matrix, order, axis in ((rows, (3, 2, 1), "rows"), (columns, (1, 3, 2), "columns")):
            if matrix is not None:
                move = layers.Dense(32, use_bias=False, trainable=False, name=f"view{k}_{axis}")
                x = layers.Permute(order, name=f"view{k}_{axis}_back")(
                    move(layers.Permute(order, name=f"view{k}_{axis}_last")(x)))
                move.set_weights([matrix])
        outputs += [model(x)] * count
    kind = "flip_translate" if translate else "flip"
    outputs = layers.Average(name=f"{kind}_average")(outputs)
    return keras.Model(inputs, outputs, name=f"{model.name}_{kind}_tta")


def with_tta_kind(model, kind):
    """`model` scored with test-time augmentation `kind` ("none", "flip" or "flip_translate") instead of its
    own: a TTA wrapper's inner model is re-wrapped (or returned alone, for "none")."""
    if tta_kind(model):
        model = tta_inner(model)
    return model if kind == "none" else with_tta(model, translate=kind == "flip_translate")


def tta_inner(model):
    """The model that a TTA wrapper (with_tta) calls on each view of the image."""
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise ValueError(f"{model.name}: expected one inner model inside a TTA model, found {len(inner)}")
    return inner[0]


def tta_kind(model):
    """"flip" or "flip_translate" for a `with_tta` wrapper (including older flip-TTA saves), else None."""
    names = {layer.name for layer in model.layers}
    return next((kind for kind in ("flip", "flip_translate") if f"{kind}_average" in names), None)
