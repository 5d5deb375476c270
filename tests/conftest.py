"""A tiny synthetic CIFAR-100 in the official "python version" format."""

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "cifar100"
FINE = [f"fine{i}" for i in range(100)]
COARSE = [f"coarse{i}" for i in range(20)]


CLASS_COLOURS = np.random.default_rng(42).integers(30, 226, (100, 3))


def make_split(per_class, seed):
    """Noisy images whose colour depends on the class (learnable), in the official row layout (N, 3072)."""
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(100), per_class)
    rng.shuffle(fine)
    noise = rng.integers(-30, 31, (len(fine), 32, 32, 3))
    images = (CLASS_COLOURS[fine][:, None, None, :] + noise).astype(np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(len(fine), 3072)
    return {"batch_label": "synthetic", "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
            "data": rows}


def write_dataset(root, train_per_class=6, test_per_class=2):
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, content in (("train", make_split(train_per_class, 1)), ("test", make_split(test_per_class, 2)),
                          ("meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})):
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return folder


def write_archive(root):
    """cifar-100-python.tar.gz of a synthetic data set, in `root`."""
    root = Path(root)
    write_dataset(root / "src")
    archive = root / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "src" / "cifar-100-python", arcname="cifar-100-python")
    return archive


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A folder holding cifar-100-python/ with 600 train and 200 test images."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root)
    return root


@pytest.fixture(autouse=True)
def isolated_keras_home(tmp_path, monkeypatch):
    """No test reads or writes the user's Keras cache or a data dir from the environment."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CIFAR100_DATA_DIR", raising=False)


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends with Keras' default float32 policy."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")
