"""CIFAR-100-C-style corruptions: deterministic, shape- and dtype-preserving, stronger at higher severity; the
`evaluate --corruptions` benchmark agrees with direct predictions on the same corrupted images; report table."""

import json

import keras
import numpy as np
import pytest

from conftest import CLASS_COLOURS
from cifar_keras.cli import common
from cifar_keras import cli
from cifar_keras.evaluation import corruption_ops as ops, corruptions
from cifar_keras import data
from cifar_keras.reporting import figures, tables

SEVERITIES = corruptions.SEVERITIES


def natural_images(n=12, seed=1):
    """Photo-like test images: a smooth colour gradient, a disc of another colour (an object with edges) and a
    faint sinusoidal texture; pure noise would make the blurs look like they do nothing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    images = []
    for i in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        base = np.stack([a + 0.3 * (x - 0.5), b + 0.3 * (y - 0.5), c + 0.2 * np.sin(3 * x + 2 * y + i)], axis=-1)
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
        disc = ((31 * y - cy) ** 2 + (31 * x - cx) ** 2 < r * r)[..., None]
        base = np.where(disc, rng.uniform(0, 1, 3), base)
        texture = 0.05 * np.sin(x * rng.uniform(10, 25) + rng.uniform(0, 6)) * np.sin(y * rng.uniform(10, 25))
        images.append(np.clip(base + texture[..., None], 0, 1))
    return (np.stack(images) * 255).astype(np.uint8)


IMAGES = natural_images()


@pytest.fixture(scope="module")
def corrupted():
    """{name: [corrupted IMAGES at severity 1..5]}, computed once."""
    return {name: [corruptions.corrupt(IMAGES, name, s) for s in SEVERITIES] for name in corruptions.CORRUPTIONS}


def mean_abs_change(images, clean=IMAGES):
    return float(np.abs(images.astype(np.float64) - clean).mean())


def decorrelation(images, clean=IMAGES):
    """Mean over images of 1 - the Pearson correlation of the image with its clean version."""
    x = clean.reshape(len(clean), -1).astype(np.float64)
    y = images.reshape(len(images), -1).astype(np.float64)
    x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    return float(np.mean(1 - (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))))


def non_affine_residual(images, margin=6):
    """Mean absolute residual of each image's interior from its least-squares affine fit a + b x + c y (per
    channel): an affine warp of an affine ramp leaves it affine; only a non-affine displacement adds to it."""
    ys, xs = np.mgrid[margin:32 - margin, margin:32 - margin]
    design = np.stack([np.ones(xs.size), xs.ravel(), ys.ravel()], axis=1)
    residuals = []
    for image in images.astype(np.float64):
        values = image[margin:32 - margin, margin:32 - margin].reshape(-1, 3)
        coef = np.linalg.lstsq(design, values, rcond=None)[0]
        residuals.append(np.abs(values - design @ coef).mean())
    return float(np.mean(residuals))


def strictly_increasing(values):
    return all(b > a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_each_corruption_is_deterministic_and_keeps_shape_and_dtype(name, corrupted, monkeypatch):
    for severity, out in zip(SEVERITIES, corrupted[name]):
        assert out.shape == IMAGES.shape and out.dtype == np.uint8
        assert np.array_equal(out, corruptions.corrupt(IMAGES, name, severity))  # same call, same images
        assert not np.array_equal(out, IMAGES)
    # Each image stays itself at severity 1: more correlated with its own clean image than with any other.
    out, clean = (a.reshape(len(a), -1).astype(float) for a in (corrupted[name][0], IMAGES))
    out, clean = ((a - a.mean(axis=1, keepdims=True)) / a.std(axis=1, keepdims=True) for a in (out, clean))
    assert np.array_equal((out @ clean.T).argmax(axis=1), np.arange(len(IMAGES)))
    # Whole chunks of images are corrupted as they are in a larger batch (one random stream per chunk).
    monkeypatch.setattr(corruptions, "CHUNK", 4)
    whole = corruptions.corrupt(IMAGES, name, 3)
    assert np.array_equal(corruptions.corrupt(IMAGES[:8], name, 3), whole[:8])


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
                                  "snow", "frost", "fog", "elastic_transform"])
def test_random_corruptions_follow_the_seed(name, corrupted):
    assert not np.array_equal(corruptions.corrupt(IMAGES, name, 3, seed=1), corrupted[name][2])


# Corruptions whose mean absolute change from the clean image grows at every severity under the original tables.
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "snow", "fog",
            "brightness", "contrast", "pixelate", "jpeg_compression"]


@pytest.mark.parametrize("name", MONOTONE)
def test_higher_severity_changes_the_image_more(name, corrupted):
    changes = [mean_abs_change(out) for out in corrupted[name]]
    assert strictly_increasing(changes), changes


def test_the_four_others_grow_as_their_parameter_tables_say(corrupted):
    """The original tables make these four not monotone in mean absolute change (see corruptions.py); each grows
    in what its table does increase."""
    assert set(MONOTONE) | {"glass_blur", "motion_blur", "frost", "elastic_transform"} == set(corruptions.CORRUPTIONS)
    # glass blur: severities 4-5 shuffle twice, 1-3 once.
    glass = [mean_abs_change(out) for out in corrupted["glass_blur"]]
    assert min(glass[3:]) > max(glass[:3]), glass
    # motion blur: longer and wider kernels, except 3 -> 4 (same sigma, taps of < 0.3 % weight added).
    motion = [mean_abs_change(out) for out in corrupted["motion_blur"]]
    assert strictly_increasing(motion[:3] + motion[4:]) and motion[3] >= 0.99 * motion[2], motion
    # frost: the frost's share of the image grows at every severity, so the image decorrelates from its clean self.
    frost = [decorrelation(out) for out in corrupted["frost"]]
    assert strictly_increasing(frost), frost
    # elastic: on affine colour ramps, the non-affine (local) displacement grows over severities 2-5; severity 1
    # is a pure affine warp.
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:32, 0:32] - 15.5
    slopes = rng.uniform(2, 3.5, (8, 3, 2)) * rng.choice([-1, 1], (8, 3, 2))
    ramps = np.clip(128 + xs[None, ..., None] * slopes[:, None, None, :, 0]
                    + ys[None, ..., None] * slopes[:, None, None, :, 1], 0, 255).astype(np.uint8)
    residual = [non_affine_residual(corruptions.corrupt(ramps, "elastic_transform", s)) for s in SEVERITIES]
    assert strictly_increasing(residual[1:]) and residual[0] < residual[2], residual
    assert residual[0] < 2 * non_affine_residual(ramps) + 0.1, residual  # only quantisation added


def test_building_blocks_by_hand():
    import matplotlib.colors
    from scipy import ndimage

    # clipped_zoom: factor 1 keeps the image; a ramp (value = column) zoomed by 1.25 about the centre is the centre
    # crop of 26 columns (3 to 28) stretched to round(26 * 1.25) = 32 columns (scipy's zoom maps output column o to
    # input o * 25 / 31), of which the centre 32 are all of them.
    ramp = np.broadcast_to(np.arange(32, dtype=np.float64)[None, None, :, None], (1, 32, 32, 1))
    assert np.array_equal(ops.clipped_zoom(ramp, 1.0), ramp)
    assert np.allclose(ops.clipped_zoom(ramp, 1.25)[0, 5, :, 0], 3 + np.arange(32) * 25 / 31)
    # ... and it is the original's: scipy.ndimage.zoom (order 1) of the centre crop, then the centre 32 x 32.
    x = IMAGES[:4] / 255.0
    for factor in (1.03, 1.17, 1.25, 1.75, 2.25):
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        zoomed = np.stack([ndimage.zoom(image[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
                           for image in x])
        trim = (zoomed.shape[1] - 32) // 2
        assert np.abs(ops.clipped_zoom(x, factor) - zoomed[:, trim:trim + 32, trim:trim + 32]).max() < 1e-5
    # sample (bilinear): halfway between two columns is their mean; beyond the border, 'reflect' repeats the edge
    # pixel (d c b a | a b c d) and 'mirror' does not (d c b | a b c d).
    rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
    shifted = ops.sample(ramp, rows[None], cols[None] + 0.5, "reflect")[0, 0, :31, 0]
    assert np.allclose(shifted, np.arange(31) + 0.5)
    assert ops.sample(ramp, rows[None], cols[None] - 1, "reflect")[0, 0, 0, 0] == 0
    assert ops.sample(ramp, rows[None], cols[None] - 1, "mirror")[0, 0, 0, 0] == 1
    # gaussian_blur: a dot spreads as the sampled Gaussian, cut at 4 sigma and normalised; a constant stays put.
    dot = np.zeros((1, 32, 32), np.float64)
    dot[0, 16, 16] = 1
    g = np.exp(-np.arange(-2, 3) ** 2 / (2 * 0.5 ** 2))
    assert np.allclose(ops.gaussian_blur(dot, 0.5)[0, 14:19, 14:19], np.outer(g, g) / g.sum() ** 2)
    assert np.allclose(ops.gaussian_blur(np.full((1, 32, 32), 0.3), 2.0, "reflect", truncate=3), 0.3)
    # brightness: HSV value + c, clipped (matplotlib's HSV as skimage's); up to 1 grey level of float rounding.
    hsv = matplotlib.colors.rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + corruptions.BRIGHTNESS[4], 0, 1)
    expected = ops.to_uint8(matplotlib.colors.hsv_to_rgb(hsv)).astype(int)
    assert np.abs(corruptions.corrupt(IMAGES[:4], "brightness", 5) - expected).max() <= 1


def test_defocus_disk_and_motion_kernel_by_hand():
    # Radius 0.3 holds the centre pixel only; OpenCV's 3 x 3 GaussianBlur (sigma 0.4) spreads it: outer(g, g).
    e = np.exp(-1 / (2 * 0.4 ** 2))
    g = np.array([e, 1, e]) / (1 + 2 * e)
    assert np.allclose(ops.disk(0.3, 0.4), np.outer(g, g), atol=1e-7)
    # Radius 1 with a negligible alias blur: the centre and its 4 neighbours, 1/5 each.
    plus = np.pad(np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]) / 5, 1)
    assert np.allclose(ops.disk(1, 0.2), plus, atol=1e-4)
    # ImageMagick's motion blur at angle 0: pixel (y, x) = sum_i k_i * pixel (y, x + i), so a bright dot is
    # smeared to its left with the one-sided Gaussian weights k_i ~ exp(-i^2 / (2 sigma^2)), 2 * 6 + 1 taps.
    dot = np.zeros((1, 32, 32, 1), np.float32)
    dot[0, 16, 20, 0] = 1
    weights = np.exp(-np.arange(13) ** 2 / (2 * 1.5 ** 2))
    smeared = ops.magick_motion_blur(dot, 6, 1.5, [0.0])[0, :, :, 0]
    assert np.allclose(smeared[16, 20 - 12:21][::-1], weights / weights.sum(), atol=1e-6)
    assert smeared.sum() == pytest.approx(1, abs=1e-6) and smeared[16, 21:].sum() == 0 and smeared[15].sum() == 0
    # ... and at 90 degrees (y grows downwards) it is smeared upwards.
    assert ops.magick_motion_blur(dot, 6, 1.5, [90.0])[0, 16 - 3, 20, 0] == pytest.approx(
        weights[3] / weights.sum(), abs=1e-6)


def test_corrupt_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(IMAGES.astype(np.float32), "fog", 1)
    with pytest.raises(ValueError, match="unknown corruption"):
        corruptions.corrupt(IMAGES, "fisheye", 1)
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(IMAGES, "fog", 6)


# --- the benchmark through the command line -----------------------------------------------------

@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    """A tiny untrained-but-accurate model of the synthetic data: the nearest class colour to the image's mean
    colour (the synthetic classes differ by colour), built from Keras layers and saved as .keras."""
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(100, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    colours = CLASS_COLOURS.astype(np.float32)
    # -|c - colour_k|^2 / 50 up to a term common to all classes.
    model.get_layer("logits").set_weights([2 * colours.T / 50, -(colours ** 2).sum(axis=1) / 50])
    path = tmp_path_factory.mktemp("models") / "colour.keras"
    model.save(path)
    return path, model


def top1(model, images, labels):
    return 100.0 * float(np.mean(model.predict(images.astype(np.float32), verbose=0).argmax(axis=1) == labels))


def test_benchmark_record_matches_direct_predictions(colour_model, data_root, tmp_path, capsys):
    path, model = colour_model
    output = tmp_path / "robustness.json"
    argv = ["evaluate", str(path), "--corruptions", "--corruption-types", "fog,brightness", "--severities", "5,1",
            "--corruption-images", "100", "--data-dir", str(data_root), "--output", str(output)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    record = json.loads(output.read_text())
    assert record["kind"] == "corruptions" and record["command"] == common.command_line(argv)
    assert record["corruption_types"] == ["fog", "brightness"] and record["severities"] == [1, 5]
    assert record["hardware"]["cores"] >= 1 and record["backend"] == keras.backend.backend()
    # The stratified subset: one image of each class.
    test = data.load(data_root).test
    keep = data.stratified_split(test.fine, 1, 0)[1]
    images, labels = test.images[keep], test.fine[keep]
    assert record["images"] == 100 and sorted(labels.tolist()) == list(range(100))
    assert record["clean"]["top1"] == pytest.approx(top1(model, images, labels), abs=1e-9)
    assert [(r["corruption"], r["severity"]) for r in record["corrupted"]] == [
        ("fog", 1), ("fog", 5), ("brightness", 1), ("brightness", 5)]
    for row in record["corrupted"]:
        corrupted = corruptions.corrupt(images, row["corruption"], row["severity"], seed=0)
        assert row["top1"] == pytest.approx(top1(model, corrupted, labels), abs=1e-9)
        assert row["images"] == 100
    direct = [r["top1"] for r in record["corrupted"]]
    assert record["summary"]["mean_corruption_top1"] == pytest.approx(np.mean(direct), abs=1e-9)
    assert record["summary"]["by_corruption"]["fog"] == pytest.approx(np.mean(direct[:2]), abs=1e-9)
    assert record["summary"]["by_severity"]["5"] == pytest.approx((direct[1] + direct[3]) / 2, abs=1e-9)
    # The corruption is really applied: brightness 5 costs this colour-matching model accuracy.
    assert direct[3] < record["clean"]["top1"] - 10
    assert f"{record['summary']['mean_corruption_top1']:.2f}" in printed.out
    assert "4/5" in printed.err or "5/5" in printed.err  # the progress bar
    # The report's table and figure read the record.
    folder = tmp_path / "records"
    (folder / "corruptions").mkdir(parents=True)
    (folder / "corruptions" / "colour.json").write_text(output.read_text())
    table = tables.corruption_table(folder)
    assert "| `colour` |" in table and f"**{record['summary']['mean_corruption_top1']:.2f} %**" in table
    assert f"| fog | {record['summary']['by_corruption']['fog']:.2f} % |" in table
    assert figures.corruption_figure(folder, tmp_path / "curve.png") and (tmp_path / "curve.png").stat().st_size
    assert tables.corruption_table(tmp_path / "empty") == ""


def test_default_record_goes_beside_the_model(colour_model, data_root, tmp_path):
    path, model = colour_model
    copy = tmp_path / "copy.keras"
    copy.write_bytes(path.read_bytes())
    assert cli.main(["evaluate", str(copy), "--corruptions", "--corruption-types", "contrast", "--severities", "2",
                     "--data-dir", str(data_root)]) == 0
    record = json.loads((tmp_path / "corruptions" / "copy.json").read_text())
    assert record["images"] == 200 and record["image_selection"] == "all"
    assert len(record["corrupted"]) == 1


@pytest.mark.parametrize("extra, message", [
    (["--corruptions", "--corruption-types", "gaussian_noise,fisheye"], "--corruption-types: unknown fisheye; "),
    (["--corruptions", "--severities", "0,3"], "--severities: unknown 0; choose from 1, 2, 3, 4, 5"),
    (["--corruptions", "--corruption-types", ","], "--corruption-types: unknown empty list"),
    (["--corruption-types", "fog"], "--corruption-types needs --corruptions"),
    (["--corruptions", "--corruption-images", "150"], "--corruption-images 150 must be a multiple of the 100"),
])
def test_bad_benchmark_options_are_one_line_errors(extra, message, colour_model, data_root, tmp_path, capsys):
    code = cli.main(["evaluate", str(colour_model[0]), *extra, "--data-dir", str(data_root),
                     "--output", str(tmp_path / "never.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "never.json").exists()
