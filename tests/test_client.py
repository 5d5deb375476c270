"""The TF Serving REST client: the request it sends and how it reads the answer."""

import io
import json
import urllib.request

import numpy as np
from PIL import Image

from cifar_keras.deploy import client


def corner_image(path):
    """32x32 grey, with a red top-left, green top-right and blue bottom-left pixel."""
    pixels = np.full((32, 32, 3), 128, np.uint8)
    pixels[0, 0], pixels[0, 31], pixels[31, 0] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(pixels).save(path)
    return path


class FakeServer:
    """Stands in for urllib.request.urlopen: records the request, answers `reply`."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []

    def __call__(self, request, timeout=None):
        self.requests.append(request)
        return io.BytesIO(json.dumps(self.reply).encode())  # a context manager with read()


def test_request_body_and_parsed_reply(tmp_path, monkeypatch):
    first = corner_image(tmp_path / "corners.png")
    second = tmp_path / "wide.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(second)  # resized to 32x32 on the way
    reply = {"predictions": [
        {"top5_classes": [3, 0, 4, 1, 2], "top5_probabilities": [0.5, 0.2, 0.15, 0.1, 0.05]},
        {"top5_classes": [99, 98, 97, 96, 95], "top5_probabilities": [0.9, 0.04, 0.03, 0.02, 0.01]},
    ]}
    server = FakeServer(reply)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    url = "http://serving:8501/v1/models/cnn:predict"

    result = client.predict_rest(url, [first, second])

    request, = server.requests
    assert request.full_url == url and request.get_method() == "POST"
    assert request.get_header("Content-type") == "application/json"
    body = json.loads(request.data)
    assert list(body) == ["instances"] and len(body["instances"]) == 2
    corners, wide = (np.array(instance) for instance in body["instances"])
    assert corners.shape == wide.shape == (32, 32, 3)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in corners.ravel().tolist() + wide.ravel().tolist())
    # Rows first, then columns, then RGB, in the order the files were given.
    assert body["instances"][0][0][0] == [255, 0, 0]
    assert body["instances"][0][0][31] == [0, 255, 0] and body["instances"][0][31][0] == [0, 0, 255]
    assert (corners[1:31, 1:31] == 128).all() and (wide == [10, 20, 30]).all()

    assert result == [
        [("bear", 0.5), ("apple", 0.2), ("beaver", 0.15), ("aquarium_fish", 0.1), ("baby", 0.05)],
        [("worm", 0.9), ("woman", 0.04), ("wolf", 0.03), ("willow_tree", 0.02), ("whale", 0.01)],
    ]


def test_the_client_sends_the_centre_of_a_large_non_square_photo(tmp_path, monkeypatch):
    pixels = np.empty((480, 640, 3), np.uint8)
    pixels[...] = (20, 60, 220)
    pixels[:, 80:560] = (200, 40, 40)  # the centred 480x480 square
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    server = FakeServer({"predictions": [{"top5_classes": [0, 1, 2, 3, 4], "top5_probabilities": [0.2] * 5}]})
    monkeypatch.setattr(urllib.request, "urlopen", server)
    client.predict_rest("http://serving:8501/v1/models/cnn:predict", [tmp_path / "photo.png"])
    sent = np.array(json.loads(server.requests[0].data)["instances"][0])
    # What predict itself feeds the model, and only the centre square's colour.
    assert (sent == client.read_image(tmp_path / "photo.png")).all()
    assert sent.shape == (32, 32, 3) and (np.abs(sent - (200, 40, 40)) <= 1).all()
