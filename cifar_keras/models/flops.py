"""Analytic forward-pass FLOPs of a Keras model, per image.

Counts 2 FLOPs per multiply-add in the layers that hold nearly all the compute:
convolutions (standard, grouped, depthwise, separable, transposed; 1-3 D) and `Dense`.
Biases, BatchNormalization, activations, pooling, adds, averages and
normalisation are elementwise (or close to it) and are not counted: this is the
usual convention of FLOP tables in papers (e.g. ResNet's "3.6 GFLOPs").
Any other layer (EinsumDense, attention, Lambda, a custom layer) is refused,
rather than counted as free.
"""

import math

import keras
from keras import layers

from cifar_keras.errors import UserError

CONVS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
TRANSPOSED_CONVS = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
DEPTHWISE_CONVS = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
SEPARABLE_CONVS = (layers.SeparableConv1D, layers.SeparableConv2D)
COUNTED = (*CONVS, *TRANSPOSED_CONVS, *DEPTHWISE_CONVS, *SEPARABLE_CONVS, layers.Dense)
# Elementwise (or close to it), data movement, or off at inference: their FLOPs are not counted.
NOT_COUNTED = (
    layers.InputLayer, layers.Identity,
    layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU, layers.PReLU, layers.Softmax,
    layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization, layers.UnitNormalization,
    layers.Normalization, layers.Rescaling,
    layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D, layers.SpatialDropout3D,
    layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout,
    layers.RandomFlip, layers.RandomCrop, layers.RandomTranslation, layers.RandomRotation, layers.RandomZoom,
    layers.RandomContrast,
    layers.Flatten, layers.Reshape, layers.Permute, layers.RepeatVector,
    layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum, layers.Concatenate,
    layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
    layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
    layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D,
    layers.Cropping1D, layers.Cropping2D, layers.Cropping3D, layers.CenterCrop,
    layers.UpSampling1D, layers.UpSampling2D, layers.UpSampling3D, layers.Resizing,
)


def forward_flops(model):
    """FLOPs of one forward pass of `model` on ONE image (batch 1).

    Walks the call graph of a functional or (built) Sequential model: every call
    of a layer counts, so a shared layer, or a nested model called twice (as in
    `models.with_tta`), counts each call. A nested model counts its own graph.
    """
    nodes_by_depth = _graph(model)._nodes_by_depth
    return sum(_node_flops(node) for nodes in nodes_by_depth.values() for node in nodes)


def training_flops(forward, images_seen):
    """Approximate training FLOPs for `images_seen` images (epochs x training-set size)."""
    # The backward pass costs about twice the forward one (gradients with respect to
    # both the activations and the weights), so one training step is ~3x a forward pass.
    return 3 * forward * images_seen


def _graph(model):
    """The functional graph of a Model: itself, or the Functional a Sequential wraps."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(f"model '{model.name}' has no functional graph to walk: build it on a "
                         "keras.Input (subclassed models are not supported)")
    return graph


def _node_flops(node):
    """FLOPs of one call (node) of a layer, for one image."""
    layer = node.operation
    if isinstance(layer, keras.Model):
        return forward_flops(layer)
    if isinstance(layer, NOT_COUNTED):
        return 0
    if not isinstance(layer, COUNTED):
        raise UserError(f"layer '{layer.name}' ({type(layer).__name__}): its FLOPs are not known; forward_flops "
                        "counts convolutions and Dense layers, and elementwise layers as free")
    in_shape, out_shape = node.input_tensors[0].shape, node.output_tensors[0].shape
    if isinstance(layer, layers.Dense):
        # One multiply-add per kernel entry at each position: the leading non-batch dims.
        return 2 * math.prod(layer.kernel.shape) * _prod(in_shape[1:-1], layer)
    # Convolutions: one multiply-add per kernel entry at each output position; a transposed
    # convolution spreads its whole kernel (*k, Cout, Cin) from each input position.
    shape = in_shape if isinstance(layer, TRANSPOSED_CONVS) else out_shape
    spatial = shape[1:-1] if layer.data_format == "channels_last" else shape[2:]
    positions = _prod(spatial, layer)
    if isinstance(layer, SEPARABLE_CONVS):
        kernel_size = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
    else:  # kernel (*k, Cin / groups, Cout), or (*k, Cin, multiplier) for a depthwise conv
        kernel_size = math.prod(layer.kernel.shape)
    return 2 * kernel_size * positions


def _prod(dims, layer):
    if any(d is None for d in dims):
        raise ValueError(f"layer '{layer.name}' has unknown dimensions {tuple(dims)}: "
                         "FLOPs need a fixed input shape")
    return math.prod(dims)
