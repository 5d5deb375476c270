import keras
import numpy as np
import pytest

from cifar_keras import config
from cifar_keras import data
from cifar_keras import models
from cifar_keras.models import flops
from cifar_keras.errors import UserError


def test_registry_matches_the_command_line_and_the_recipes():
    assert set(models.MODELS) == set(config.MODEL_NAMES) == set(config.RECIPES)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_args_must_be_arguments_of_the_builder(name):
    import keras_tuner

    space_args = models.MODELS[name].space(keras_tuner.HyperParameters())["model_args"]
    assert models.check_model_args(space_args, name, "space") == space_args  # the search space builds
    with pytest.raises(UserError, match=rf"^best.json: unknown model_args for {name}: colour, size$"):
        models.check_model_args({**space_args, "size": 3, "colour": "red"}, name, "best.json")


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_takes_raw_pixels_and_returns_probabilities(name):
    model = models.MODELS[name].build()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    probs = model.predict(pixels.astype(np.float32), verbose=0)
    assert probs.shape == (3, 100) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(model.predict(pixels, verbose=0), probs, atol=1e-6)  # uint8 in, same answer


def test_normalisation_uses_the_dataset_statistics():
    model = models.cnn()
    layer = model.get_layer("normalise")
    mean_image = np.broadcast_to(255 * np.array(data.MEAN, np.float32), (1, 32, 32, 3))
    assert np.allclose(layer(mean_image), 0, atol=1e-4)
    one_std_up = mean_image + 255 * np.array(data.STD, np.float32)
    assert np.allclose(layer(one_std_up), 1, atol=1e-4)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'vgg'"):
        models.get_spec("vgg")


@pytest.mark.parametrize("name, params", [
    # whitening 2*2*3*24; per stage conv 3*3*Cin*W + residual conv 3*3*W*W + two BatchNorms 2*4*W; logits 512*100+100
    ("cnn", 288 + (3 * 3 * 24 * 96 + 3 * 3 * 96 * 96 + 8 * 96) + (3 * 3 * 96 * 256 + 3 * 3 * 256 * 256 + 8 * 256)
     + (3 * 3 * 256 * 512 + 3 * 3 * 512 * 512 + 8 * 512) + 512 * 100 + 100),
    # 3072 pixels -> 1536 -> 768 (no biases, each with a BatchNorm of 4 weights per unit) -> 100 logits
    ("mlp", 3072 * 1536 + 4 * 1536 + 1536 * 768 + 4 * 768 + 768 * 100 + 100),
])
def test_the_recipes_model_is_built_from_the_recipe_alone(name, params):
    recipe_model = models.MODELS[name].build(**config.RECIPES[name]["model_args"])
    assert recipe_model.count_params() == params
    if name == "cnn":
        assert "whiten" in {layer.name for layer in recipe_model.layers} and recipe_model.whiten_eps == 0.01


def test_the_builders_own_defaults_stay_what_earlier_runs_were_built_with():
    """A partial --model-args, and the commands of earlier runs, complete with them: a conv-stem CNN."""
    names = {layer.name for layer in models.cnn().layers}
    assert "stem_conv" in names and "whiten" not in names
    assert models.full_model_args("cnn", {"stem": "whiten", "dirac": True}) == {
        "widths": [96, 256, 512], "stem_width": 32, "depth": 1, "dropout": 0.0, "bn_momentum": 0.9,
        "logit_scale": 0.125, "stem": "whiten", "dirac": True, "whiten_eps": 5e-4, "data_format": "channels_last"}
    assert models.full_model_args("mlp", {}) == {"hidden": [1536, 768], "dropout": 0.3, "leaky_alpha": 0.1}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_a_search_starts_from_the_recipe(name):
    """Every default of the search space is the recipe's: the first trial (all defaults) trains the recipe."""
    import keras_tuner

    defaults = models.MODELS[name].space(keras_tuner.HyperParameters())
    assert config.make_config(name, hparams=defaults) == config.make_config(name)


def test_mlp_is_the_seed_baseline_shape():
    model = models.mlp(hidden=(64, 32))
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [l.units for l in dense] == [64, 32, 100]
    assert sum(isinstance(l, keras.layers.LeakyReLU) for l in model.layers) == 2


def test_flip_tta_averages_the_image_and_its_mirror(tmp_path):
    base = models.cnn(widths=(8, 8, 8), stem_width=8)
    tta = models.with_tta(base)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    expected = (base.predict(pixels, verbose=0) + base.predict(pixels[:, :, ::-1], verbose=0)) / 2
    assert np.allclose(tta.predict(pixels, verbose=0), expected, atol=1e-6)
    assert not np.allclose(expected, base.predict(pixels, verbose=0), atol=1e-4)  # the mirror matters
    tta.save(tmp_path / "tta.keras")  # built-in layers only: plain keras reloads it
    reloaded = keras.saving.load_model(tmp_path / "tta.keras")
    assert np.allclose(reloaded.predict(pixels, verbose=0), expected, atol=1e-6)


def test_translate_tta_weighs_the_mirror_pair_half_and_each_shifted_pair_a_quarter(tmp_path):
    base = models.cnn(widths=(8, 8, 8), stem_width=8)
    tta = models.with_tta(base, translate=True)
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :32, :32], padded[:, 2:, 2:]

    def pair(images):
        return (base.predict(images, verbose=0) + base.predict(images[:, :, ::-1], verbose=0)) / 2

    expected = pair(pixels) / 2 + pair(up_left) / 4 + pair(down_right) / 4
    assert np.allclose(tta.predict(pixels, verbose=0), expected, atol=1e-6)
    assert not np.allclose(expected, pair(pixels), atol=1e-4)  # the shifts matter
    assert models.tta_kind(tta) == "flip_translate" and models.tta_kind(base) is None
    tta.save(tmp_path / "tta.keras")
    reloaded = keras.saving.load_model(tmp_path / "tta.keras")
    assert np.allclose(reloaded.predict(pixels, verbose=0), expected, atol=1e-6)


def test_whitening_stem_decorrelates_patches_of_the_training_images():
    """The frozen `whiten` conv maps 2x2 patches to (nearly) uncorrelated unit-variance directions."""
    rng = np.random.default_rng(0)
    # Correlated channels and neighbouring pixels, as in real photos.
    base = rng.normal(128, 30, (400, 32, 32, 1)) + rng.normal(0, 20, (400, 32, 32, 3))
    images = np.clip(base + np.roll(base, 1, axis=2), 0, 255).astype(np.uint8)
    model = models.cnn(widths=(8, 8, 8), stem="whiten")
    whiten = keras.Model(model.input, model.get_layer("whiten").output)
    before = whiten.predict(images[:50].astype(np.float32), verbose=0)
    models.whiten_from_data(model, images)
    out = whiten.predict(images[:50].astype(np.float32), verbose=0)[:, :31, :31, :12].reshape(-1, 12)
    covariance = np.cov(out.T)
    # Unit variance, except where the eps regulariser shrinks a near-empty direction (never above 1).
    assert np.sum(np.abs(np.diag(covariance) - 1) < 0.1) >= 11 and np.diag(covariance).max() < 1.1
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.1
    assert not np.allclose(before, whiten.predict(images[:50].astype(np.float32), verbose=0))
    assert not model.get_layer("whiten").trainable and model.get_layer("whiten").count_params() == 2 * 2 * 3 * 24


def test_whiten_eps_caps_how_much_the_whitening_stem_amplifies_pixel_noise():
    """Noise in the rare high-frequency patch directions is amplified by at most 1/sqrt(whiten_eps)."""
    rng = np.random.default_rng(0)
    base = rng.normal(128, 30, (400, 32, 32, 1)) + rng.normal(0, 1, (400, 32, 32, 3))
    images = np.clip(base + np.roll(base, 1, axis=2), 0, 255).astype(np.uint8)  # smooth: tiny eigenvalues
    sigma = 2.0  # pixel noise, in 0-255 units
    noise = rng.normal(0, sigma, (50, 32, 32, 3)).astype(np.float32)
    clean = images[:50].astype(np.float32)
    gain = {}
    for eps in (5e-4, 1e-2):
        model = models.cnn(widths=(8, 8, 8), stem="whiten", whiten_eps=eps)
        models.whiten_from_data(model, images)
        whiten = keras.Model(model.input, model.get_layer("whiten").output)
        response = whiten.predict(clean + noise, verbose=0) - whiten.predict(clean, verbose=0)
        input_variance = (sigma / 255 / min(data.STD)) ** 2  # the noise's variance after normalisation (at most)
        gain[eps] = response[:, :31, :31].var(axis=(0, 1, 2)).max() / input_variance
    assert gain[1e-2] <= 1.1 / 1e-2
    assert gain[5e-4] > 5 * gain[1e-2]  # the default leaves those directions loud
    with pytest.raises(ValueError, match="whiten_eps"):
        models.cnn(stem="whiten", whiten_eps=0)


def test_dirac_init_makes_stage_convs_start_as_the_identity():
    model = models.cnn(widths=(8, 16, 16), stem_width=8, dirac=True)
    conv = model.get_layer("stage2_res_conv")  # 16 -> 16: every filter is the identity
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
    assert np.allclose(keras.ops.convert_to_numpy(conv(x)), x, atol=1e-6)
    widening = model.get_layer("stage2_conv")  # 8 -> 16: the first 8 filters pass their channel through
    x8 = np.random.default_rng(1).normal(size=(2, 16, 16, 8)).astype(np.float32)
    widened = keras.ops.convert_to_numpy(widening(x8))
    assert np.allclose(widened[..., :8], x8, atol=1e-6)
    assert not np.allclose(widened[..., 8:], 0)  # the rest keep their random initialisation
    reloaded_config = keras.Model.from_config(model.get_config())  # plain Keras layers only
    assert reloaded_config.get_layer("stage2_conv").kernel_initializer.__class__.__name__ == "HeNormal"


def test_muon_orthogonalises_convolution_updates_and_leaves_the_rest_to_adamw():
    from cifar_keras.config import make_config
    from cifar_keras.training.optimizers import make_optimizer

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    optimizer = make_optimizer(make_config("cnn", optimizer="muon", learning_rate=0.01, weight_decay=0.0,
                                           warmup=0.0, epochs=1), steps_per_epoch=1000)
    optimizer.build(model.trainable_variables)
    muon = [v.path for v in model.trainable_variables if not optimizer._should_use_adamw(v)]
    assert muon == ["conv/kernel"]  # not the classifier, BatchNorm or biases

    # A gradient of very unequal singular values: Muon's step on the (3*3*3, 16) matrix has them all near one size.
    rng = np.random.default_rng(0)
    spread = np.geomspace(10, 0.1, 16)  # singular values about 100x apart
    gradient = (np.linalg.qr(rng.normal(size=(27, 16)))[0] * spread).astype("float32")
    kernel = model.get_layer("conv").kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    grads = [gradient.reshape(3, 3, 3, 16) if v is kernel else np.zeros(v.shape, "float32")
             for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    step = (before - keras.ops.convert_to_numpy(kernel)).reshape(27, 16)
    singular = np.linalg.svd(step, compute_uv=False)
    assert singular.max() / singular.min() < 2.0 < spread.max() / spread.min()
    # Moonlight's rule: the step's RMS is rms_rate (0.2) x the learning rate, whatever the kernel's shape.
    assert np.sqrt(np.mean(step ** 2)) == pytest.approx(0.2 * float(keras.ops.convert_to_numpy(optimizer.learning_rate)), rel=0.35)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warms_up_linearly_then_decays_to_zero_in_its_shape(decay):
    from cifar_keras.config import make_config
    from cifar_keras.training.optimizers import make_schedule

    schedule = make_schedule(make_config("cnn", learning_rate=0.4, warmup=0.25, epochs=4, decay=decay),
                             steps_per_epoch=100)
    lr = np.array([float(keras.ops.convert_to_numpy(schedule(step))) for step in range(401)])
    assert lr[0] == pytest.approx(0.0) and lr[50] == pytest.approx(0.2) and lr[100] == pytest.approx(0.4)
    assert lr[400] == pytest.approx(0.0, abs=1e-6) and np.all(np.diff(lr[100:]) <= 1e-7)
    # Half-way through the decay: the triangle is at half the peak, the cosine too, but a quarter in, they part.
    assert lr[250] == pytest.approx(0.2, rel=1e-3)
    assert lr[175] == pytest.approx(0.3 if decay == "linear" else 0.2 * (1 + np.cos(np.pi / 4)), rel=1e-3)


def test_linear_schedule_survives_saving_with_the_optimizer(tmp_path):
    from cifar_keras.training.optimizers import LinearDecay

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(LinearDecay(0.1, warmup_steps=2, total_steps=10)), "mse")
    model.save(tmp_path / "m.keras")
    schedule = keras.saving.load_model(tmp_path / "m.keras").optimizer._learning_rate  # the schedule itself
    assert isinstance(schedule, LinearDecay) and schedule.get_config()["total_steps"] == 10


def test_any_size_copy_of_the_cnn_computes_the_same_and_takes_smaller_images():
    model = models.cnn(widths=(8, 16, 16), stem="whiten", dirac=True)
    copy = models.with_input_size(model, None)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)
    assert copy.predict(pixels[:, :24, :24], verbose=0).shape == (2, 100)
    copy.get_layer("logits").kernel.assign(np.zeros((16, 100), np.float32))
    assert np.abs(keras.ops.convert_to_numpy(model.get_layer("logits").kernel)).max() > 0  # a copy, not the same weights


def test_a_channels_first_cnn_computes_what_the_channels_last_one_does_with_the_same_weights():
    """The layout is a speed setting: same weights, same outputs (batch statistics included) and FLOPs."""
    args = dict(widths=(8, 16, 16), stem="whiten", dirac=True)
    last, first = models.cnn(**args), models.cnn(**args, data_format="channels_first")
    first.set_weights(last.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    models.whiten_from_data(last, images.astype(np.uint8))
    models.whiten_from_data(first, images.astype(np.uint8))
    for training in (False, True):  # in training, BatchNorm normalises over its batch: the channel axis matters
        np.testing.assert_allclose(keras.ops.convert_to_numpy(first(images, training=training)),
                                   keras.ops.convert_to_numpy(last(images, training=training)), atol=1e-5)
    assert first.get_layer("stage1_bn").output.shape == (None, 8, 16, 16)  # N, C, H, W
    assert flops.forward_flops(first) == flops.forward_flops(last)
    with pytest.raises(ValueError, match="data_format"):
        models.cnn(data_format="NCHW")
