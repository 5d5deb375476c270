"""forward_flops against counts worked out by hand (2 FLOPs per multiply-add)."""

import keras
import pytest
from keras import layers

from cifar_keras import models
from cifar_keras.errors import UserError
from cifar_keras.models.flops import forward_flops, training_flops
from cifar_keras.recipes import RECIPES


def tiny(size=8):
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(6, 3, padding="valid")(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def single(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def test_tiny_functional_model():
    conv1 = 2 * (3 * 3 * 3) * 4 * (8 * 8)  # 3x3x3 kernel, 4 filters, "same": 8x8 out
    conv2 = 2 * (3 * 3 * 4) * 6 * (2 * 2)  # pooled to 4x4x4, "valid": 2x2 out
    dense = 2 * (2 * 2 * 6) * 10
    assert forward_flops(tiny()) == conv1 + conv2 + dense


def test_sequential_model_counts_the_same():
    model = keras.Sequential([keras.Input((8, 8, 3)), *tiny().layers[1:]])
    assert forward_flops(model) == 2 * (3 * 3 * 3) * 4 * (8 * 8) + 2 * (3 * 3 * 4) * 6 * (2 * 2) + 2 * (2 * 2 * 6) * 10


def test_strided_grouped_depthwise_and_separable_convs():
    assert forward_flops(single(layers.Conv2D(8, 3, strides=2, padding="same"), (8, 8, 4))) == 2 * (3 * 3 * 4) * 8 * (4 * 4)
    assert forward_flops(single(layers.Conv2D(8, 3, groups=2, padding="same"), (8, 8, 4))) == 2 * (3 * 3 * 2) * 8 * (8 * 8)
    assert forward_flops(single(layers.DepthwiseConv2D(3), (8, 8, 4))) == 2 * (3 * 3) * 4 * (6 * 6)
    assert forward_flops(single(layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (8, 8, 4))) \
        == 2 * (3 * 3) * 4 * 2 * (8 * 8)
    depthwise, pointwise = 2 * (3 * 3) * 4 * (8 * 8), 2 * 4 * 8 * (8 * 8)
    assert forward_flops(single(layers.SeparableConv2D(8, 3, padding="same"), (8, 8, 4))) == depthwise + pointwise


def test_transposed_convs_spread_their_kernel_from_every_input_position():
    # 4x4 inputs of 2 channels, each spreading a 3x3x8 patch: as many multiply-adds as the strided
    # Conv2D(2, 3, strides=2) from 8x8x8 to 4x4x2 whose gradient it is, 2 * (3 * 3 * 8) * 2 * (4 * 4).
    assert forward_flops(single(layers.Conv2DTranspose(8, 3, strides=2, padding="same"), (4, 4, 2))) == 4608
    assert forward_flops(single(layers.Conv1DTranspose(5, 3), (7, 2))) == 2 * 3 * 5 * 2 * 7  # 7 inputs, 3x5x2 kernel
    assert forward_flops(single(layers.Conv3DTranspose(2, 2, strides=2), (2, 2, 2, 3))) == 2 * (2 * 2 * 2) * 2 * 3 * 8
    channels_first = layers.Conv2DTranspose(4, 2, strides=2, data_format="channels_first")
    assert forward_flops(single(channels_first, (3, 5, 5))) == 2 * (2 * 2) * 4 * 3 * (5 * 5)


class Doubling(layers.Layer):
    def call(self, x):
        return 2 * x


@pytest.mark.parametrize("layer, message", [
    (layers.EinsumDense("ab,bc->ac", output_shape=4, name="mix"), "layer 'mix' (EinsumDense): its FLOPs are not known"),
    (layers.Lambda(lambda x: x @ keras.ops.ones((6, 6)), name="mm"), "layer 'mm' (Lambda): its FLOPs are not known"),
    (Doubling(name="twice"), "layer 'twice' (Doubling): its FLOPs are not known"),
])
def test_a_layer_of_unknown_cost_is_refused_not_counted_as_free(layer, message):
    with pytest.raises(UserError) as error:
        forward_flops(single(layer, (6,)))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_attention_is_refused():
    inputs = keras.Input((5, 8))
    model = keras.Model(inputs, layers.MultiHeadAttention(2, 4, name="attend")(inputs, inputs))
    with pytest.raises(UserError, match=r"^layer 'attend' \(MultiHeadAttention\)"):
        forward_flops(model)


def test_dense_on_a_3d_input_counts_every_position():
    assert forward_flops(single(layers.Dense(3), (5, 7))) == 2 * 7 * 3 * 5
    assert forward_flops(single(layers.Dense(32), (32, 3, 32))) == 2 * 32 * 32 * (32 * 3)


def test_shared_layer_counts_each_call():
    dense = layers.Dense(4)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, layers.Add()([dense(inputs), dense(inputs)]))
    assert forward_flops(model) == 2 * (2 * 6 * 4)


def test_nested_model_called_twice_counts_twice():
    conv1 = 2 * (3 * 3 * 3) * 4 * (32 * 32)  # tiny() at 32x32: "same" conv at 32x32
    conv2 = 2 * (3 * 3 * 4) * 6 * (14 * 14)  # pooled to 16x16, "valid": 14x14
    dense = 2 * (14 * 14 * 6) * 10
    inner = conv1 + conv2 + dense
    mirror = 2 * 32 * 32 * (32 * 3)  # Dense(32) across the width at each of 32 rows x 3 channels
    assert forward_flops(models.with_tta(tiny(32))) == 2 * inner + mirror
    # Translate TTA: 6 calls; the mirror moves 1 axis, each of the 4 shifted views both axes (same cost each).
    assert forward_flops(models.with_tta(tiny(32), translate=True)) == 6 * inner + 9 * mirror


def test_project_cnn():
    # Each 3x3 conv: 2 * (3 * 3 * Cin) * Cout * (H * W); stage convs run before the 2x2 pool,
    # residual convs after it.
    stem = 2 * (3 * 3 * 3) * 32 * (32 * 32)
    stage1 = 2 * (3 * 3 * 32) * 96 * (32 * 32) + 2 * (3 * 3 * 96) * 96 * (16 * 16)
    stage2 = 2 * (3 * 3 * 96) * 256 * (16 * 16) + 2 * (3 * 3 * 256) * 256 * (8 * 8)
    stage3 = 2 * (3 * 3 * 256) * 512 * (8 * 8) + 2 * (3 * 3 * 512) * 512 * (4 * 4)
    logits = 2 * 512 * 100
    assert forward_flops(models.cnn()) == stem + stage1 + stage2 + stage3 + logits


def test_recipe_cnn_with_its_whitening_stem():
    whiten = 2 * (2 * 2 * 3) * 24 * (32 * 32)  # frozen 2x2 conv, 24 filters, "same"
    stage1 = 2 * (3 * 3 * 24) * 96 * (32 * 32) + 2 * (3 * 3 * 96) * 96 * (16 * 16)
    stage2 = 2 * (3 * 3 * 96) * 256 * (16 * 16) + 2 * (3 * 3 * 256) * 256 * (8 * 8)
    stage3 = 2 * (3 * 3 * 256) * 512 * (8 * 8) + 2 * (3 * 3 * 512) * 512 * (4 * 4)
    model = models.cnn(**RECIPES["cnn"]["model_args"])
    assert forward_flops(model) == whiten + stage1 + stage2 + stage3 + 2 * 512 * 100


def test_training_flops_is_three_forward_passes_per_image():
    assert training_flops(1000, 50_000) == 3 * 1000 * 50_000


def test_unbuilt_sequential_is_a_clear_error():
    with pytest.raises(ValueError, match="no functional graph"):
        forward_flops(keras.Sequential([layers.Dense(3)]))
