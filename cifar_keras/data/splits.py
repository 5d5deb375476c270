"""The validation split that fit carves from the training images, and the one a saved model was scored on.

The split has a seed of its own, SPLIT_SEED, not the run's --seed: seed-repeat runs are scored on the same
images. A run record describes its split ({"seed", "size", "sha256"}: `describe_split`), and `evaluate --split
val` and `calibrate` carve the split of the model's own record again (`model_validation_split`).
"""

import hashlib
from pathlib import Path

import numpy as np

from cifar_keras import records
from cifar_keras.errors import UserError

SPLIT_SEED = 0  # the seed every default run used for its split before the split had a seed of its own
DEFAULT_VAL_SIZE = 5000  # frozen like SPLIT_SEED: the size a record without one was carved with


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


def validation_indices(labels, val_size=DEFAULT_VAL_SIZE, split_seed=SPLIT_SEED):
    """Indices (rest, validation) of the training images: `val_size` held out, stratified over the classes."""
    classes = len(np.unique(labels))
    if val_size % classes:
        raise UserError(f"--val-size {val_size} must be a multiple of the {classes} classes")
    return stratified_split(labels, val_size // classes, split_seed)


def train_val_split(train, val_size=DEFAULT_VAL_SIZE, train_size=None, seed=0, split_seed=SPLIT_SEED):
    """(training, validation) Splits of `train`. The validation split depends on `split_seed` alone; the run's
    `seed` picks the stratified subset of --train-size training images, if any."""
    rest, val = validation_indices(train.fine, val_size, split_seed)
    if train_size is not None and train_size < len(rest):
        classes = len(np.unique(train.fine))
        if train_size % classes or train_size <= 0:
            raise UserError(f"--train-size {train_size} must be a positive multiple of the {classes} classes")
        _, keep = stratified_split(train.fine[rest], train_size // classes, seed + 1, "--train-size")
        rest = rest[keep]
    return train.take(rest), train.take(val)


def indices_sha256(indices):
    """sha256 (hex) of the sorted indices written as decimal text joined by commas, e.g. "3,17,42"."""
    return hashlib.sha256(",".join(str(int(i)) for i in np.sort(indices)).encode("ascii")).hexdigest()


def describe_split(labels, val_size=DEFAULT_VAL_SIZE, split_seed=SPLIT_SEED):
    """The validation split of training labels `labels`, for a run record: {"seed", "size", "sha256"} (of its
    indices: indices_sha256)."""
    return _description(validation_indices(labels, val_size, split_seed)[1], split_seed)


def _description(val, split_seed):
    return {"seed": split_seed, "size": int(len(val)), "sha256": indices_sha256(val)}


def recorded_split(record, where):
    """(split seed, size, sha256 or None) of the validation split that the run record `record` (read from
    `where`) was scored on. Records written before the split had a seed of its own ("val_split" missing) carved
    it with the run's seed, config.seed."""
    described = record.get("val_split") if isinstance(record, dict) else None
    if isinstance(described, dict) and {"seed", "size", "sha256"} <= described.keys():
        return described["seed"], described["size"], described["sha256"]
    config = record.get("config") if isinstance(record, dict) else None
    if isinstance(config, dict) and isinstance(config.get("val_size"), int):
        return config.get("seed", 0), config["val_size"], None
    raise UserError(f"{where}: names no validation split (neither 'val_split' nor 'config.val_size'), so the "
                    "split the model was scored on cannot be reproduced")


def _check_flags(where, record, size, val_size, seed):
    """Refuse --val-size / --seed given on the command line that contradict the record."""
    if val_size is not None and val_size != size:
        raise UserError(f"--val-size {val_size}: the model's record {where} names a {size}-image validation "
                        "split; leave --val-size out")
    run_seed = (record.get("config") or {}).get("seed")
    if seed is not None and run_seed is not None and seed != run_seed:
        raise UserError(f"--seed {seed}: the model's record {where} was trained with --seed {run_seed}; "
                        "leave --seed out")


def model_validation_split(train, model_path, val_size=None, seed=None):
    """(validation Split, description) of the model at `model_path`: the split its run record NAME.json beside
    it was scored on, carved again from `train` and checked against the record's hash; without a record, the
    --val-size images (default 5000) of the fixed split seed. `val_size`/`seed`: the command line's --val-size
    and --seed (None when not given), which must agree with the record."""
    where = Path(model_path).with_suffix(".json")
    if not where.is_file():
        split_seed, size, expected = SPLIT_SEED, val_size or DEFAULT_VAL_SIZE, None
    else:
        record = records.read(where)
        split_seed, size, expected = recorded_split(record, where)
        _check_flags(where, record, size, val_size, seed)
    val = validation_indices(train.fine, size, split_seed)[1]
    description = _description(val, split_seed)
    if expected is not None and description["sha256"] != expected:
        raise UserError(f"{where}: its validation split (seed {split_seed}, {size} images, sha256 {expected[:12]}...) "
                        "is not the one carved from this data set; use the --data-dir the model was trained on")
    return train.take(val), description
