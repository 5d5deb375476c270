"""The model builders: the MLP baseline and the CNN (with its whitening stem and dirac initialisation).

Every model takes raw RGB pixels (N, 32, 32, 3), 0-255, and normalises them itself,
and ends in a float32 softmax over the 100 fine classes.

What `fit` trains is a recipe (recipes.py), which names every argument of its builder. The
builders' keyword defaults are not a recipe: they are what a partial `--model-args` completes
with, and what the commands and `config` blocks of earlier runs were built with, so they stay as
they are (`models.cnn()` is a conv-stem CNN; `models.cnn(**recipes.CNN["model_args"])` is the
recipe's).
"""

import keras
import numpy as np
from keras import layers

from cifar_keras.data.cifar100 import MEAN, NUM_CLASSES, STD
from cifar_keras.errors import UserError


def normalise(inputs):
    """Per-channel standardisation with the published training-set statistics."""
    mean = [255.0 * m for m in MEAN]
    variance = [(255.0 * s) ** 2 for s in STD]
    return layers.Normalization(mean=mean, variance=variance, name="normalise")(inputs)


def classifier(x, num_classes, logit_scale=1.0):
    # float32 softmax: stable under mixed precision and what a serving client wants.
    x = layers.Dense(num_classes, name="logits")(x)
    if logit_scale != 1.0:
        # Max-pooled ReLU features are large; scaling the logits down keeps early
        # high-learning-rate steps stable (airbench uses 1/9).
        x = layers.Rescaling(logit_scale, name="logit_scale")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def mlp(hidden=(1536, 768), dropout=0.3, leaky_alpha=0.1, num_classes=NUM_CLASSES):
    """The seed project's baseline: flattened pixels, two LeakyReLU hidden layers."""
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = layers.Flatten()(normalise(inputs))
    for units in hidden:
        x = layers.Dense(units, use_bias=False, kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(negative_slope=leaky_alpha)(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, classifier(x, num_classes), name="mlp")


def conv_bn_relu(x, filters, bn_momentum, name, data_format="channels_last"):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      data_format=data_format, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(axis=channel_axis(data_format), momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def cnn(widths=(96, 256, 512), stem_width=32, depth=1, dropout=0.0, bn_momentum=0.9, logit_scale=0.125,
        stem="conv", dirac=False, whiten_eps=5e-4, data_format="channels_last", num_classes=NUM_CLASSES):
    """A fast CNN for CPUs, after airbench's layout (Jordan, 2024) and ResNet-9 (Page, 2018).

    A narrow stem at full resolution (the 32x32 stage dominates CPU time), then per
    stage: conv -> 2x2 max-pool -> BN-ReLU, and a second conv with an identity
    shortcut (`depth` such convs per stage; 0: none). ReLU, not GELU: GELU is much
    slower under bfloat16 on CPUs.

    stem: "conv" (a trained 3x3 conv-BN-ReLU of `stem_width` channels) or "whiten"
    (airbench's frozen 2x2 patch-whitening conv, 24 channels, set from the training
    images by `whiten_from_data`; `whiten_eps` is added to the patch covariance's
    eigenvalues before their inverse square root: the larger, the less the rare
    high-frequency directions are amplified, and with them pixel noise). dirac: start
    every stage conv as the identity on its first input-many filters (airbench), so a
    fresh net passes its input through. data_format: the layout of the feature maps
    inside the net ("channels_first": transposed once after normalising; the input
    stays N x 32 x 32 x 3), the same weights either way: a speed setting (the
    PyTorch backend transposes channels-last maps around each convolution).
    """
    if stem not in ("conv", "whiten"):
        raise ValueError(f"stem must be 'conv' or 'whiten', got {stem!r}")
    if not whiten_eps > 0:
        raise ValueError(f"whiten_eps must be > 0, got {whiten_eps!r}")
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = normalise(inputs)
    if data_format == "channels_first":
        x = layers.Permute((3, 1, 2), name="to_channels_first")(x)
    if stem == "whiten":
        # Each of the 12 whitened directions of a 2x2x3 patch, with both signs: ReLU then keeps all of it.
        x = layers.Conv2D(2 * WHITEN_DIMS, 2, padding="same", use_bias=False, trainable=False,
                          data_format=data_format, name="whiten")(x)
        x = layers.ReLU(name="whiten_relu")(x)
    else:
        x = conv_bn_relu(x, stem_width, bn_momentum, "stem", data_format)
    for i, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                          data_format=data_format, name=f"stage{i}_conv")(x)
        x = layers.MaxPooling2D(data_format=data_format, name=f"stage{i}_pool")(x)
        x = layers.BatchNormalization(axis=channel_axis(data_format), momentum=bn_momentum, name=f"stage{i}_bn")(x)
        x = layers.ReLU(name=f"stage{i}_relu")(x)
        if depth:
            y = x
            for j in range(depth):
                name = f"stage{i}_res{j + 1}" if depth > 1 else f"stage{i}_res"
                y = conv_bn_relu(y, width, bn_momentum, name, data_format)
            x = layers.Add(name=f"stage{i}_add")([x, y])
    x = layers.GlobalMaxPooling2D(data_format=data_format, name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    model = keras.Model(inputs, classifier(x, num_classes, logit_scale), name="cnn")
    if dirac:
        dirac_init(model)
    if stem == "whiten":
        model.whiten_eps = whiten_eps  # read by whiten_from_data; the saved model keeps the set filters
    return model


WHITEN_DIMS = 2 * 2 * 3  # a 2x2 RGB patch


def channel_axis(data_format):
    return 1 if data_format == "channels_first" else -1


def dirac_init(model):
    """Identity initialisation of the stage convolutions (airbench's dirac_): filter i of a conv
    with at least i inputs starts as the identity on input channel i; the other filters keep
    their random initialisation. Set as weights, not as a custom initializer, so a saved model
    still loads with plain Keras."""
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.name.startswith("stage") and layer.name.endswith("_conv"):
            kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
            kh, kw, cin, cout = kernel.shape
            n = min(cin, cout)
            kernel[..., :n] = 0.0
            kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
            layer.kernel.assign(kernel)


def whiten_from_data(model, images, eps=None):
    """Set a model's frozen `whiten` conv from the 2x2 patches of `images` (uint8, N x 32 x 32 x 3):
    its filters project a normalised patch on the eigenvectors of the patches' covariance,
    scaled by 1/sqrt(eigenvalue + eps), so its outputs are decorrelated with (nearly) unit variance.
    eps defaults to the model's `whiten_eps`. No-op for a model without that layer."""
    if "whiten" not in {layer.name for layer in model.layers}:
        return
    eps = model.whiten_eps if eps is None else eps
    x = (images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    windows = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))  # N, 31, 31, C, 2, 2
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, WHITEN_DIMS).astype(np.float64)  # kernel order
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    filters = (eigenvectors / np.sqrt(eigenvalues + eps)).reshape(2, 2, 3, WHITEN_DIMS)
    model.get_layer("whiten").set_weights([np.concatenate([filters, -filters], axis=-1).astype(np.float32)])


def with_input_size(model, size=None):
    """A copy of `model` (same weights) that takes `size` x `size` images, or images of any size (None): for
    training on smaller images (progressive resizing) and counting its FLOPs there. Only a fully convolutional
    model (as the CNN, which pools globally) can; the MLP's Dense layers fix its input size."""
    try:
        copy = keras.models.clone_model(model, input_tensors=keras.Input((size, size, 3), name="pixels"))
    except (ValueError, TypeError):
        raise UserError(f"model '{model.name}' takes only 32 x 32 images: progressive resizing (--low-res) "
                        "needs a convolutional model") from None
    copy.set_weights(model.get_weights())
    return copy
