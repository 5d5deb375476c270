"""Analytic forward-pass FLOPs of a Keras model, per image.

Counts 2 FLOPs per multiply-add in the layers that hold nearly all the compute:
convolutions (standard, grouped, depthwise, separable; 1-3 D) and `Dense`.
Biases, BatchNormalization, activations, pooling, adds, averages and
normalisation are elementwise (or close to it) and are not counted: this is the
usual convention of FLOP tables in papers (e.g. ResNet's "3.6 GFLOPs").
"""

import math

import keras
from keras import layers

CONVS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
DEPTHWISE_CONVS = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
SEPARABLE_CONVS = (layers.SeparableConv1D, layers.SeparableConv2D)


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
    if not isinstance(layer, (*CONVS, *DEPTHWISE_CONVS, *SEPARABLE_CONVS, layers.Dense)):
        return 0
    in_shape, out_shape = node.input_tensors[0].shape, node.output_tensors[0].shape
    if isinstance(layer, layers.Dense):
        # One multiply-add per kernel entry at each position: the leading non-batch dims.
        return 2 * math.prod(layer.kernel.shape) * _prod(in_shape[1:-1], layer)
    # Convolutions: one multiply-add per kernel entry at each output position.
    spatial = out_shape[1:-1] if layer.data_format == "channels_last" else out_shape[2:]
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
