"""`predict`: top-5 classes of image files, from a .keras model or any export (SavedModel, ONNX, LiteRT,
OpenVINO)."""

from pathlib import Path

import numpy as np

from cifar_keras.errors import UserError


MODEL_SIZE = 32


def fit_to_model(image):
    """A PIL RGB image of any size as the model's (32, 32, 3) uint8 input: the largest centred square,
    resized to 32x32 with Lanczos resampling.

    Centre crop, not padding: a CIFAR image shows one object, usually centred and filling most
    of the frame, so cropping a photo's sides keeps its subject at the scale the model learned,
    while padding would shrink it and add borders that no training image has (and squashing
    would distort its shape). Pillow's resize filters widen with the reduction factor, so a large
    photo is low-pass filtered as it shrinks (antialiased) rather than sampled at a few pixels.
    The square is cut out before resizing: resizing a box of the whole image (ImageOps.fit) lets
    the filter reach past the box and blend the cropped-off sides into the edge pixels.
    Used by `predict` and by the REST client alike.
    """
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def read_image(path):
    """Any PNG/JPEG/BMP/... file as a (32, 32, 3) uint8 RGB array (alpha composited on white; see
    `fit_to_model` for the crop and resize)."""
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
            return fit_to_model(image.convert("RGB"))
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt image ({e})") from None


def load_predictor(model_path):
    """A function pixels (N, 32, 32, 3) -> probabilities (N, 100), and the class names, of a .keras file or
    of any export (the format is read from the path: see runtimes.py)."""
    from cifar_keras.deploy import runtimes

    predictor = runtimes.load(model_path)
    return predictor, predictor.names


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
