"""CIFAR-100 "python version": find, download, verify and load it; carve the validation split.

The pickles are untrusted input, so they are read with a restricted unpickler that
only rebuilds what the official files hold (numpy arrays, dtypes, builtin containers).
"""

import _codecs
import hashlib
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from cifar_keras.errors import UserError

ARCHIVE_NAME = "cifar-100-python.tar.gz"
ARCHIVE_DIR = "cifar-100-python"
ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
NUM_CLASSES = 100
NUM_SUPERCLASSES = 20

# Published per-channel statistics of the training images (0-1 scale); the models
# normalise with these inside the graph, so they take raw 0-255 pixels.
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)

# numpy 2 moved numpy.core to numpy._core (and warns on the old name); numpy 1.26 has only numpy.core.
_NUMPY_CORE = getattr(np, "_core", None) or np.core

# What the official pickles may reference, and nothing else. The files name the
# numpy 1 path; pickles written under numpy 2 name the new one. Python 3 writes the
# array bytes of a protocol-2 pickle through _codecs.encode (str -> bytes, no side effects).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}") from None


@dataclass
class Split:
    """Images (N, 32, 32, 3) uint8, fine labels 0-99 and coarse labels 0-19 (int64)."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray

    def __len__(self):
        return len(self.fine)

    def take(self, index):
        return Split(self.images[index], self.fine[index], self.coarse[index])


@dataclass
class Cifar100:
    train: Split
    test: Split
    fine_names: list
    coarse_names: list

    def fine_to_coarse(self):
        """(100,) array: the superclass of each fine class, read off the training labels."""
        table = np.full(NUM_CLASSES, -1, dtype=np.int64)
        table[self.train.fine] = self.train.coarse
        return table


def load_pickle(path):
    """Unpickle one official file with the restricted unpickler; one-line errors on failure."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: not a valid CIFAR-100 pickle ({e})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise UserError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


def _field(path, content, key):
    if not isinstance(content, dict) or key not in content:
        raise UserError(f"{path}: missing key '{key}'")
    return content[key]


def load_split(path, expected_size=None):
    """Read `train` or `test` into a Split, checking shapes, dtypes and label ranges."""
    content = load_pickle(path)
    data = _field(path, content, "data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise UserError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    n = len(data)
    if expected_size is not None and n != expected_size:
        raise UserError(f"{path}: expected {expected_size} images, found {n}")
    labels = {}
    for key, high in (("fine_labels", NUM_CLASSES), ("coarse_labels", NUM_SUPERCLASSES)):
        values = np.asarray(_field(path, content, key))
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise UserError(f"{path}: '{key}' must hold {n} integers, got shape {values.shape}")
        if n and (values.min() < 0 or values.max() >= high):
            raise UserError(f"{path}: '{key}' out of range 0-{high - 1}")
        labels[key] = values.astype(np.int64)
    # Rows are 1024 R, 1024 G, 1024 B values; make them channels-last images.
    images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels["fine_labels"], labels["coarse_labels"])


def load_meta(path):
    content = load_pickle(path)
    names = {}
    for key, count in (("fine_label_names", NUM_CLASSES), ("coarse_label_names", NUM_SUPERCLASSES)):
        values = _field(path, content, key)
        if not isinstance(values, list) or len(values) != count or not all(isinstance(v, str) for v in values):
            raise UserError(f"{path}: '{key}' must be a list of {count} names")
        names[key] = values
    return names["fine_label_names"], names["coarse_label_names"]


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unsafe_member(member):
    """Why `member` could land outside the target folder, or None (what the "data" filter refuses).

    With no absolute path and no `..` in any name or link target, no chain of links
    can climb out of the folder; devices and FIFOs have no place in a data set.
    """
    names = {"path": member.name}
    if member.issym() or member.islnk():
        names["link target"] = member.linkname
    for kind, name in names.items():
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or os.path.isabs(name):
            return f"absolute {kind} '{name}'"
        if ".." in path.parts:
            return f"{kind} '{name}' with '..'"
    if member.isdev():
        return f"device or FIFO '{member.name}'"
    return None


def _extract_all(tar, archive, target):
    # tarfile's extraction filters came with Python 3.10.12/3.11.4; before, check every member by hand.
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    members = tar.getmembers()
    for member in members:
        reason = _unsafe_member(member)
        if reason:
            raise UserError(f"{archive}: refused to extract {reason}")
    tar.extractall(target, members=members)


def _extract(archive):
    """Extract the archive beside itself, refusing members that would land outside it."""
    target = archive.parent
    try:
        with tarfile.open(archive, "r:gz") as tar:
            _extract_all(tar, archive, target)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive}: cannot extract ({e})") from None
    if not (target / ARCHIVE_DIR).is_dir():
        raise UserError(f"{archive}: archive has no '{ARCHIVE_DIR}/' folder")
    return target / ARCHIVE_DIR


def download(cache_dir=None, origin=ORIGIN, md5=ARCHIVE_MD5):
    """Fetch the official archive with keras.utils.get_file, verify its md5 and extract it."""
    import keras

    cache_dir = Path(cache_dir or Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")))
    cache_dir.mkdir(parents=True, exist_ok=True)  # else get_file silently falls back to /tmp/.keras
    try:
        path = keras.utils.get_file(ARCHIVE_NAME, origin=origin, cache_dir=str(cache_dir), cache_subdir="datasets")
    except Exception as e:  # get_file raises bare Exception on network errors
        raise UserError(f"cannot download {origin}: {e}") from None
    path = Path(path)
    actual = md5sum(path)
    if actual != md5:
        path.unlink()
        raise UserError(f"{origin}: md5 {actual} does not match the published {md5}; the file was removed")
    return _extract(path)


def _dataset_dir(root):
    """A folder holding cifar-100-python/ (or its .tar.gz), or that folder itself."""
    root = Path(root)
    if (root / "meta").is_file() and root.name == ARCHIVE_DIR:
        return root
    if (root / ARCHIVE_DIR).is_dir():
        return root / ARCHIVE_DIR
    if (root / ARCHIVE_NAME).is_file():
        return _extract(root / ARCHIVE_NAME)
    return None


def locate(data_dir=None, origin=ORIGIN, md5=ARCHIVE_MD5):
    """--data-dir, else $CIFAR100_DATA_DIR, else the Keras cache, else download."""
    explicit = data_dir or os.environ.get("CIFAR100_DATA_DIR")
    if explicit:
        found = _dataset_dir(explicit)
        if found is None:
            raise UserError(f"{explicit}: holds neither {ARCHIVE_DIR}/ nor {ARCHIVE_NAME}")
        return found
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    return _dataset_dir(cache) or download(cache.parent, origin=origin, md5=md5)


def load(data_dir=None):
    """The whole data set: train and test splits and both name lists."""
    folder = locate(data_dir)
    fine_names, coarse_names = load_meta(folder / "meta")
    train = load_split(folder / "train")
    test = load_split(folder / "test")
    return Cifar100(train, test, fine_names, coarse_names)


def stratified_split(labels, per_class, seed=0, option="--val-size"):
    """Indices (rest, held_out) with `per_class` examples of every class held out."""
    rng = np.random.default_rng(seed)
    held_out = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) <= per_class:
            raise UserError(f"{option} needs more than {per_class} images per class; class {c} has {len(members)}")
        held_out.append(rng.choice(members, per_class, replace=False))
    held_out = np.sort(np.concatenate(held_out))
    rest = np.setdiff1d(np.arange(len(labels)), held_out)
    return rest, held_out


def train_val_split(train, val_size=5000, train_size=None, seed=0):
    """Carve a stratified validation split; optionally keep a stratified subset for training."""
    classes = len(np.unique(train.fine))
    if val_size % classes:
        raise UserError(f"--val-size {val_size} must be a multiple of the {classes} classes")
    rest, val = stratified_split(train.fine, val_size // classes, seed)
    if train_size is not None and train_size < len(rest):
        if train_size % classes or train_size <= 0:
            raise UserError(f"--train-size {train_size} must be a positive multiple of the {classes} classes")
        _, keep = stratified_split(train.fine[rest], train_size // classes, seed + 1, "--train-size")
        rest = rest[keep]
    return train.take(rest), train.take(val)
