"""A small TF Serving REST client: image files in, top-5 class names out.

    from cifar_keras.deploy.client import predict_rest
    predict_rest("http://localhost:8501/v1/models/cnn:predict", ["cat.png"])
"""

import json
import urllib.request

from cifar_keras.data.classes import FINE_NAMES
from cifar_keras.deploy.predict import read_image


def build_request(image_paths):
    """TF Serving's row format: {"instances": [32x32x3 nested lists of 0-255 values, ...]}; each image
    centre-cropped to a square and downscaled to 32x32 exactly as `predict` does (predict.fit_to_model)."""
    return {"instances": [read_image(path).tolist() for path in image_paths]}


def predict_rest(url, image_paths, timeout=30):
    body = json.dumps(build_request(image_paths)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        predictions = json.loads(response.read())["predictions"]
    return [[(FINE_NAMES[c], p) for c, p in zip(row["top5_classes"], row["top5_probabilities"])]
            for row in predictions]
