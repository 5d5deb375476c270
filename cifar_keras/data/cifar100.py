"""CIFAR-100 "python version": find, download, verify and load it (the validation split: splits.py).

The pickles are untrusted input, so they are read with a restricted unpickler that
only rebuilds what the official files hold (numpy arrays, dtypes, builtin containers).
"""

import _codecs
import contextlib
import io
import os
import pickle
import sys
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
    # Our own extraction, not get_file(extract=True): Keras' filter_safe_tarinfos only warns about, and skips,
    # members that would land outside the folder (keras/src/utils/file_utils.py), where a tampered archive
    # must be refused; and it extracts into a "<name>_extracted" folder instead of beside the archive.
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


class _ProgressOnceStarted(io.TextIOBase):
    """get_file's messages, to standard error (standard output may carry a command's JSON), from its progress bar's
    first update on: its "Downloading data from" line waits for the download to start, so that a failure to
    connect stays a one-line error."""

    def __init__(self):
        self.held = []

    def isatty(self):
        return sys.stderr.isatty()

    def write(self, text):
        if self.held is None:
            return sys.stderr.write(text)
        self.held.append(text)
        if len(self.held) > 1:
            sys.stderr.write("".join(self.held))
            sys.stderr.flush()
            self.held = None
        return len(text)


class DownloadError(UserError):
    """The archive could not be fetched (no network, no such URL): `locate` says where it looked."""


def download(folder, origin=None, md5=ARCHIVE_MD5):
    """Fetch the official archive (from `origin`, default ORIGIN) into `folder` with keras.utils.get_file, which
    checks its md5, and extract it there; returns the cifar-100-python/ folder. A `folder` made for the download
    is removed again when the download fails."""
    import keras

    origin = origin or ORIGIN
    folder = Path(folder)
    made = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the data folder ({e.strerror or type(e).__name__})") from None
    if not os.access(folder, os.W_OK):  # else get_file silently falls back to /tmp/.keras
        raise UserError(f"{folder}: not writable, cannot download {ARCHIVE_NAME} into it")
    try:
        with contextlib.redirect_stdout(_ProgressOnceStarted()):
            path = keras.utils.get_file(ARCHIVE_NAME, origin=origin, file_hash=md5, hash_algorithm="md5",
                                        cache_dir=str(folder), cache_subdir="")
    except ValueError:  # get_file's md5 check; it leaves the file behind
        (folder / ARCHIVE_NAME).unlink(missing_ok=True)
        raise UserError(f"{origin}: the md5 of the download does not match the published {md5}; "
                        "the file was removed") from None
    except Exception as e:  # get_file raises bare Exception on network errors
        for parent in made:  # innermost first; each is empty again
            parent.rmdir()
        raise DownloadError(f"cannot download {origin}: {e}") from None
    return _extract(Path(path))


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


def locate(data_dir=None, origin=None, md5=ARCHIVE_MD5):
    """The cifar-100-python/ folder: in --data-dir, else in $CIFAR100_DATA_DIR, else in the Keras cache
    ($KERAS_HOME/datasets); where that folder holds neither it nor its archive, the archive is downloaded into
    it (md5-checked) and extracted, as torchvision's root and download=True do."""
    explicit = data_dir or os.environ.get("CIFAR100_DATA_DIR")
    folder = Path(explicit) if explicit else Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    found = _dataset_dir(folder)
    if found is not None:
        return found
    try:
        return download(folder, origin, md5)
    except DownloadError as e:
        raise UserError(f"{folder}: holds neither {ARCHIVE_DIR}/ nor {ARCHIVE_NAME}, and {e}; put a copy of "
                        f"{ARCHIVE_NAME} or of the extracted {ARCHIVE_DIR}/ there, or point --data-dir (or "
                        "$CIFAR100_DATA_DIR) at the folder that holds one") from None


def load(data_dir=None, origin=None, md5=ARCHIVE_MD5):
    """The whole data set: train and test splits and both name lists (see `locate` for where it comes from)."""
    folder = locate(data_dir, origin, md5)
    fine_names, coarse_names = load_meta(folder / "meta")
    train = load_split(folder / "train")
    test = load_split(folder / "test")
    return Cifar100(train, test, fine_names, coarse_names)
