"""export to TF Serving's layout, reload with TensorFlow alone, predict on image files."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from cifar_keras import cli
from cifar_keras import models
from cifar_keras.data.classes import FINE_NAMES

ONLY_TENSORFLOW = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    out = serve(pixels=tf.constant(np.load(sys.argv[2])))
    assert "cifar_keras" not in sys.modules
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
""")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    model = models.cnn(widths=(8, 16, 16), stem_width=8)
    # Non-trivial BatchNorm statistics, so a wrong inference mode would show.
    for layer in model.layers:
        if "bn" in layer.name:
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, np.float32))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def exported(keras_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    assert cli.main(["export", str(keras_file), "--root", str(root)]) == 0
    return root


def test_layout_versions_and_labels(exported, keras_file, capsys):
    version1 = exported / "tiny" / "1"
    assert (version1 / "saved_model.pb").is_file() and (version1 / "variables").is_dir()
    assert (version1 / "assets.extra" / "labels.txt").read_text().splitlines() == list(FINE_NAMES)
    # The layout alone here: the fixture's export was verified in a fresh process, these need not be.
    assert cli.main(["export", str(keras_file), "--root", str(exported), "--no-verify"]) == 0
    assert (exported / "tiny" / "2" / "saved_model.pb").is_file()
    assert cli.main(["export", str(keras_file), "--root", str(exported), "--name", "other", "--version", "7",
                     "--no-verify"]) == 0
    assert (exported / "other" / "7" / "saved_model.pb").is_file()
    capsys.readouterr()
    assert cli.main(["export", str(keras_file), "--root", str(exported), "--version", "1", "--no-verify"]) == 2
    assert "version 1 already exists" in capsys.readouterr().err


def test_savedmodel_needs_only_tensorflow_and_matches_keras(exported, keras_file, tmp_path):
    import keras

    pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    subprocess.run([sys.executable, "-c", ONLY_TENSORFLOW, str(exported / "tiny" / "1"), str(tmp_path / "pixels.npy"),
                    str(tmp_path / "out.npz")], check=True, capture_output=True)
    out = np.load(tmp_path / "out.npz")
    expected = keras.saving.load_model(keras_file).predict(pixels, verbose=0)
    assert np.allclose(out["probabilities"], expected, atol=1e-5)
    assert (out["top5_classes"] == np.argsort(-expected, axis=1)[:, :5]).all()
    assert np.allclose(out["top5_probabilities"], np.sort(expected, axis=1)[:, ::-1][:, :5], atol=1e-5)


def test_views_ship_the_single_view_or_the_flip_net_of_a_tta_model(tmp_path):
    import tensorflow as tf

    import keras

    keras.utils.set_random_seed(0)  # a fixed net: some initialisations saturate at x20 and their views agree
    net = models.cnn(widths=(8, 8, 8), stem_width=8)
    logits = net.get_layer("logits")
    logits.kernel.assign(logits.kernel * 5.0)  # probabilities far from uniform, not saturated: the views differ
    tta = models.with_tta(net, translate=True)
    tta.save(tmp_path / "tta.keras")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    single = net.predict(pixels, verbose=0)
    mirrored = net.predict(np.ascontiguousarray(pixels[:, :, ::-1]), verbose=0)
    six_views = tta.predict(pixels, verbose=0)
    assert np.abs(single - six_views).max() > 1e-3 and np.abs(single - mirrored).max() > 1e-3

    # Verified (in a fresh process, to 1e-4) against the 1-view net, not the saved 6-view one.
    assert cli.main(["export", str(tmp_path / "tta.keras"), "--root", str(tmp_path), "--views", "1", "--record",
                     str(tmp_path / "views1.json")]) == 0
    assert json.loads((tmp_path / "views1.json").read_text())["views"] == 1
    assert cli.main(["export", str(tmp_path / "tta.keras"), "--root", str(tmp_path), "--views", "2",
                     "--no-verify"]) == 0

    def served(version):
        serve = tf.saved_model.load(str(tmp_path / "tta" / str(version))).signatures["serving_default"]
        return serve(pixels=tf.constant(pixels))["probabilities"].numpy()

    assert np.allclose(served(1), single, atol=1e-5)
    assert np.allclose(served(2), (single + mirrored) / 2, atol=1e-5)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), mode="RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (33, 31, 3), dtype=np.uint8)).save(folder / "old.bmp")
    (folder / "notes.png").write_text("this is text, not an image")
    (folder / "cut.jpg").write_bytes((folder / "photo.jpg").read_bytes()[:300])
    return folder


GOOD = ["small.png", "photo.jpg", "gray.png", "alpha.png", "old.bmp"]


def run_predict(capsys, model, paths):
    code = cli.main(["predict", str(model), *map(str, paths), "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def test_predict_any_image_format(keras_file, images, capsys):
    code, results, err = run_predict(capsys, keras_file, [images / name for name in GOOD])
    assert code == 0 and err == ""
    assert [r["image"] for r in results] == [str(images / name) for name in GOOD]
    for result in results:
        probs = [entry["probability"] for entry in result["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert all(entry["class"] == FINE_NAMES[entry["index"]] for entry in result["top"])


def test_savedmodel_and_keras_predict_alike(keras_file, exported, images, capsys):
    paths = [images / name for name in GOOD]
    _, from_keras, _ = run_predict(capsys, keras_file, paths)
    _, from_export, _ = run_predict(capsys, exported / "tiny" / "1", paths)
    for a, b in zip(from_keras, from_export):
        assert [e["index"] for e in a["top"]] == [e["index"] for e in b["top"]]
        assert np.allclose([e["probability"] for e in a["top"]], [e["probability"] for e in b["top"]], atol=1e-5)


def test_bad_images_are_reported_and_the_rest_predicted(keras_file, images, capsys):
    paths = [images / "small.png", images / "missing.png", images / "notes.png", images / "cut.jpg"]
    code, results, err = run_predict(capsys, keras_file, paths)
    assert code == 1 and [r["image"] for r in results] == [str(images / "small.png")]
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert "missing.png: file not found" in lines[0]
    assert "notes.png: not an image file" in lines[1]
    assert "cut.jpg: corrupt image" in lines[2]


def test_rgba_is_composited_on_white(tmp_path):
    from cifar_keras.deploy.predict import read_image

    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (read_image(tmp_path / "clear.png") == 255).all()
    Image.new("L", (10, 10), 77).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").shape == (32, 32, 3) and (read_image(tmp_path / "gray.png") == 77).all()


@pytest.mark.parametrize("model, message", [
    ("/nonexistent/model.keras", "model file not found"),
    (".", "not an exported model folder"),
])
def test_wrong_model_path_is_one_line_error(model, message, images, capsys):
    assert cli.main(["predict", model, str(images / "small.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model}: {message}") and err.endswith("\n") and err.count("\n") == 1


CENTRE, SIDES = (200, 40, 40), (20, 60, 220)


def banded_photo(width=640, height=480):
    """A photo-sized image whose centred square is one colour and whose side bands are another."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[...] = SIDES
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top:top + side, left:left + side] = CENTRE
    return pixels


@pytest.mark.parametrize("width, height", [(640, 480), (480, 640)])
def test_a_large_non_square_photo_is_centre_cropped(tmp_path, width, height):
    from cifar_keras.deploy.predict import read_image

    Image.fromarray(banded_photo(width, height)).save(tmp_path / "photo.png")
    pixels = read_image(tmp_path / "photo.png")
    # Only the centre square is kept: no trace of the side bands (padding or squashing would show them).
    assert pixels.shape == (32, 32, 3) and (np.abs(pixels.astype(int) - CENTRE) <= 1).all()


def test_downscaling_is_antialiased(tmp_path):
    from cifar_keras.deploy.predict import read_image

    # A one-pixel checkerboard averages to mid-grey; sampling every 15th pixel (480 -> 32) without
    # low-pass filtering would give pure black or white.
    checkerboard = (np.indices((480, 640)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checkerboard, mode="L").save(tmp_path / "fine.png")
    pixels = read_image(tmp_path / "fine.png").astype(int)
    assert (np.abs(pixels - 127.5) < 10).all()


def test_predict_on_a_640x480_photo_sees_its_centre(keras_file, tmp_path, capsys):
    Image.fromarray(banded_photo()).save(tmp_path / "photo.jpg", quality=95)
    Image.new("RGB", (32, 32), CENTRE).save(tmp_path / "centre.png")
    _, results, _ = run_predict(capsys, keras_file, [tmp_path / "photo.jpg", tmp_path / "centre.png"])
    photo, centre = ([entry["probability"] for entry in result["top"]] for result in results)
    # Same top class and nearly the same top-5 probabilities (near-ties lower down may swap places: JPEG).
    assert results[0]["top"][0]["index"] == results[1]["top"][0]["index"]
    assert np.allclose(photo, centre, atol=0.02)
