"""`predict`: top-5 classes of image files, from a .keras model or an exported SavedModel."""

from pathlib import Path

import numpy as np

from cifar_keras.classes import FINE_NAMES
from cifar_keras.errors import UserError


def read_image(path):
    """Any PNG/JPEG/BMP/... file as a (32, 32, 3) uint8 RGB array (alpha composited on white)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
            image = image.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt image ({e})") from None
    return np.asarray(image, dtype=np.uint8)


def load_predictor(model_path):
    """A function pixels (N, 32, 32, 3) -> probabilities (N, 100), and the class names."""
    path = Path(model_path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UserError(f"{path}: not a SavedModel folder (no saved_model.pb)")
        import tensorflow as tf

        try:
            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        except (KeyError, OSError, ValueError) as e:
            raise UserError(f"{path}: cannot load SavedModel ({type(e).__name__})") from None
        labels = path / "assets.extra" / "labels.txt"
        names = labels.read_text().splitlines() if labels.is_file() else list(FINE_NAMES)
        return (lambda pixels: serve(pixels=tf.constant(pixels, tf.float32))["probabilities"].numpy()), names
    from cifar_keras.models import load_keras_model

    model = load_keras_model(path)
    return (lambda pixels: model.predict(pixels.astype(np.float32), verbose=0)), list(FINE_NAMES)


def predict_files(model_path, image_paths, top=5):
    """(results, errors): per readable image its top classes; per unreadable one a message."""
    predictor, names = load_predictor(model_path)
    images, results, errors = [], [], []
    for path in image_paths:
        try:
            images.append((str(path), read_image(path)))
        except UserError as e:
            errors.append(str(e))
    if images:
        probabilities = predictor(np.stack([pixels for _, pixels in images]))
        for (path, _), probs in zip(images, probabilities):
            best = np.argsort(-probs)[:top]
            results.append({"image": path, "top": [{"class": names[i], "index": int(i),
                                                    "probability": float(probs[i])} for i in best]})
    return results, errors
