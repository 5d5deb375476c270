import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from cifar_keras import data
from cifar_keras.errors import UserError
from conftest import COARSE, FINE, REAL_DATA, make_split, write_archive, write_dataset


def test_loads_official_layout(data_root):
    d = data.load(data_root)
    assert d.train.images.shape == (600, 32, 32, 3) and d.train.images.dtype == np.uint8
    assert d.test.images.shape == (200, 32, 32, 3)
    assert d.fine_names == FINE and d.coarse_names == COARSE
    assert set(d.train.fine) == set(range(100)) and d.train.coarse.max() == 19
    assert (d.fine_to_coarse() == np.arange(100) // 5).all()


def test_rows_become_channels_last_images(tmp_path):
    folder = write_dataset(tmp_path)
    content = make_split(6, 1)
    rows = content["data"]
    d = data.load_split(folder / "train")
    # Official rows: 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert d.images[7, 3, 5, 0] == rows[7, 3 * 32 + 5]
    assert d.images[7, 3, 5, 1] == rows[7, 1024 + 3 * 32 + 5]
    assert d.images[7, 3, 5, 2] == rows[7, 2048 + 3 * 32 + 5]


def test_tar_gz_in_data_dir_is_extracted(tmp_path):
    archive = write_archive(tmp_path)
    (tmp_path / "src").rename(tmp_path / "elsewhere")
    d = data.load(archive.parent)
    assert len(d.train) == 600


@pytest.fixture
def old_tarfile(monkeypatch):
    """tarfile as before Python 3.10.12 / 3.11.4: no data_filter, and extractall() takes no filter."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    extractall = tarfile.TarFile.extractall

    def extractall_without_filter(self, path=".", members=None, **kwargs):
        if "filter" in kwargs:
            raise TypeError("extractall() got an unexpected keyword argument 'filter'")
        return extractall(self, path, members, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_without_filter)
    # Newer Pythons warn about, or default to, a filter: extract unfiltered, as the old ones did.
    monkeypatch.setattr(tarfile.TarFile, "extraction_filter", staticmethod(lambda member, dest: member), raising=False)


def write_tar(archive, name, kind=tarfile.REGTYPE, linkname=""):
    """A .tar.gz with a harmless cifar-100-python/ folder and one member `name` of the given kind."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        member = tarfile.TarInfo(name)
        member.type, member.linkname = kind, linkname
        payload = b"owned" if kind == tarfile.REGTYPE else b""
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    return archive


UNSAFE_MEMBERS = [
    pytest.param("../evil", tarfile.REGTYPE, "", id="dot-dot-path"),
    pytest.param("cifar-100-python/link", tarfile.SYMTYPE, "../../evil", id="symlink-out"),
    pytest.param("cifar-100-python/link", tarfile.SYMTYPE, "/etc/passwd", id="absolute-symlink"),
    pytest.param("cifar-100-python/hard", tarfile.LNKTYPE, "../evil", id="hardlink-out"),
    pytest.param("cifar-100-python/tty", tarfile.CHRTYPE, "", id="device"),
]


def check_refused(tmp_path, name, kind, linkname):
    archive = write_tar(tmp_path / "inner" / data.ARCHIVE_NAME, name, kind, linkname)
    with pytest.raises(UserError) as refused:
        data.load(archive.parent)
    message = str(refused.value)
    assert message.startswith(f"{archive}: ") and "\n" not in message
    assert not (tmp_path / "evil").exists()
    return message


@pytest.mark.parametrize("name, kind, linkname", UNSAFE_MEMBERS)
def test_unsafe_archive_member_is_refused(tmp_path, name, kind, linkname):
    check_refused(tmp_path, name, kind, linkname)


@pytest.mark.parametrize("name, kind, linkname", UNSAFE_MEMBERS + [
    pytest.param("/tmp/evil", tarfile.REGTYPE, "", id="absolute-path"),  # the "data" filter strips the "/"
])
def test_unsafe_archive_member_is_refused_without_tarfile_filters(tmp_path, old_tarfile, name, kind, linkname):
    message = check_refused(tmp_path, name, kind, linkname)
    assert f"'{linkname or name}'" in message


def test_archive_is_extracted_without_tarfile_filters(tmp_path, old_tarfile):
    archive = write_archive(tmp_path)
    (tmp_path / "src").rename(tmp_path / "elsewhere")
    d = data.load(archive.parent)
    assert len(d.train) == 600 and d.fine_names == FINE


NO_NUMPY_UNDERSCORE_CORE = """
import hashlib, sys
import numpy
del numpy._core  # as on numpy 1.26, which has only numpy.core
from cifar_keras import data
split = data.load_split(sys.argv[1])
print(hashlib.md5(split.images.tobytes() + split.fine.tobytes()).hexdigest())
"""


def test_unpickler_works_without_numpy_underscore_core(data_root):
    path = data_root / "cifar-100-python" / "train"
    run = subprocess.run([sys.executable, "-c", NO_NUMPY_UNDERSCORE_CORE, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    split = data.load_split(path)
    assert run.stdout.strip() == hashlib.md5(split.images.tobytes() + split.fine.tobytes()).hexdigest()


def test_env_var_names_the_data_dir(data_root, monkeypatch):
    monkeypatch.setenv("CIFAR100_DATA_DIR", str(data_root))
    assert data.locate() == data_root / "cifar-100-python"


def archive_origin(tmp_path):
    """A synthetic official archive served over file://: (its URL, its md5)."""
    archive = write_archive(tmp_path / "origin")
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()


def test_an_empty_data_dir_gets_the_archive_downloaded_into_it(tmp_path):
    origin, md5 = archive_origin(tmp_path)
    data_dir = tmp_path / "new" / "data"  # not there yet: made, as torchvision's root is
    d = data.load(data_dir, origin=origin, md5=md5)
    assert len(d.train) == 600 and d.fine_names == FINE
    assert (data_dir / "cifar-100-python.tar.gz").is_file() and (data_dir / "cifar-100-python" / "meta").is_file()
    # Next time the data is found there, without a download.
    assert data.locate(data_dir, origin="file:///nonexistent") == data_dir / "cifar-100-python"


def test_without_a_data_dir_the_keras_cache_gets_the_download(tmp_path, monkeypatch):
    from cifar_keras.data import cifar100

    origin, md5 = archive_origin(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(cifar100, "ORIGIN", origin)
    folder = data.locate(md5=md5)
    assert folder == tmp_path / "keras_home" / "datasets" / "cifar-100-python" and (folder / "train").is_file()


def test_a_download_with_the_wrong_md5_is_refused_in_one_line_and_removed(tmp_path):
    origin, _ = archive_origin(tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError) as refused:
        data.load(data_dir, origin=origin, md5="0" * 32)
    message = str(refused.value)
    assert message.startswith(f"{origin}: the md5 of the download does not match the published {'0' * 32}")
    assert "\n" not in message
    assert list(data_dir.iterdir()) == []  # neither the archive nor anything extracted from it


def test_offline_with_no_data_says_where_it_looked_in_one_line(tmp_path, monkeypatch):
    from cifar_keras.data import cifar100

    monkeypatch.setattr(cifar100, "ORIGIN", (tmp_path / "offline" / "cifar-100-python.tar.gz").as_uri())
    data_dir = tmp_path / "missing" / "data"
    with pytest.raises(UserError) as refused:
        data.load(data_dir)
    message = str(refused.value)
    assert message.startswith(f"{data_dir}: holds neither cifar-100-python/ nor cifar-100-python.tar.gz, and "
                              f"cannot download {cifar100.ORIGIN}: ")
    assert message.endswith("or point --data-dir (or $CIFAR100_DATA_DIR) at the folder that holds one")
    assert "\n" not in message
    assert not (tmp_path / "missing").exists()  # the folders made for the download are gone again
    # The Keras cache, when no folder is named.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(UserError, match=f"^{tmp_path / 'keras_home' / 'datasets'}: holds neither"):
        data.locate()


def test_download_failure_is_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot download"):
        data.download(tmp_path, origin=(tmp_path / "missing.tar.gz").as_uri())


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(UserError, match="refused to load global (posix|os|nt).system"):
        data.load_split(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_names_the_file(tmp_path):
    folder = write_dataset(tmp_path)
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"train: .*truncated"):
        data.load(tmp_path)


def test_garbage_file_is_refused(tmp_path):
    folder = write_dataset(tmp_path)
    (folder / "meta").write_bytes(b"this is not a pickle at all")
    with pytest.raises(UserError, match="meta"):
        data.load(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(data=c["data"][:, :100]), "shape"),
    (lambda c: c.update(data=c["data"].astype(np.float32)), "uint8"),
    (lambda c: c.update(fine_labels=[100] * len(c["fine_labels"])), "out of range"),
    (lambda c: c.update(coarse_labels=c["coarse_labels"][:-1]), "coarse_labels"),
    (lambda c: c.pop("fine_labels"), "missing key 'fine_labels'"),
])
def test_malformed_arrays_are_refused(tmp_path, change, message):
    content = make_split(2, 0)
    change(content)
    path = tmp_path / "test"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(UserError, match=message):
        data.load_split(path)


def test_wrong_image_count_is_refused(data_root):
    with pytest.raises(UserError, match="expected 50000 images, found 600"):
        data.load_split(data_root / "cifar-100-python" / "train", expected_size=50000)


def positions(images, within):
    """Row numbers of `images` in `within` (images identified by their bytes: the synthetic ones are unique)."""
    rows = {image.tobytes(): i for i, image in enumerate(within)}
    return np.array([rows[image.tobytes()] for image in images])


def sha256_of(indices):
    return hashlib.sha256(",".join(str(i) for i in sorted(indices)).encode()).hexdigest()


# sha256 of the sorted indices of the validation splits that the code before the split had its own seed (commit
# 92cd8bf) carved from the synthetic training set (conftest.make_split(6, 1)): --val-size 200 at --seed 0 and 3.
OLD_SPLIT_SEED_0 = "4dd206fa9c18daacbad035bf081b549520e386e257124390367371c123479b6d"
OLD_SPLIT_SEED_3 = "b604fb7df5be2517628055d1a34378906bbe2c880993208db2ba5ffc5ee182fd"


def test_validation_split_is_stratified_disjoint_and_reproducible(data_root):
    train = data.load(data_root).train
    rest, val = data.train_val_split(train, val_size=200, seed=3)
    assert len(val) == 200 and len(rest) == 400
    assert (np.bincount(val.fine, minlength=100) == 2).all()
    _, val_other = data.train_val_split(train, val_size=200, seed=0, split_seed=1)
    assert not (val.images == val_other.images).all()
    # Disjoint: no training image is in the validation split.
    rest_rows = {img.tobytes() for img in rest.images}
    assert not any(img.tobytes() in rest_rows for img in val.images)


def test_validation_split_does_not_move_with_the_run_seed(data_root):
    """Seed repeats are scored on one split: the one every default (--seed 0) run was scored on."""
    train = data.load(data_root).train
    for seed in (0, 3, 7):
        _, val = data.train_val_split(train, val_size=200, seed=seed)
        assert sha256_of(positions(val.images, train.images)) == OLD_SPLIT_SEED_0


def test_a_split_is_described_by_seed_size_and_the_hash_of_its_indices(data_root):
    train = data.load(data_root).train
    _, val = data.train_val_split(train, val_size=200)
    assert data.describe_split(train.fine, 200) == {"seed": 0, "size": 200,
                                                    "sha256": sha256_of(positions(val.images, train.images))}
    assert data.describe_split(train.fine, 200)["sha256"] == OLD_SPLIT_SEED_0
    assert data.describe_split(train.fine, 200, split_seed=3)["sha256"] == OLD_SPLIT_SEED_3


def write_record(folder, record, name="model"):
    (folder / f"{name}.json").write_text(json.dumps(record))
    return folder / f"{name}.keras"  # the model itself is never opened


def test_a_model_is_scored_on_the_split_of_its_record(data_root, tmp_path):
    train = data.load(data_root).train
    described = {"seed": 0, "size": 200, "sha256": OLD_SPLIT_SEED_0}
    model = write_record(tmp_path, {"kind": "fit", "val_split": described, "config": {"seed": 3, "val_size": 200}})
    val, description = data.model_validation_split(train, model)
    assert description == described and sha256_of(positions(val.images, train.images)) == OLD_SPLIT_SEED_0
    # The command line may repeat what the record says, not contradict it.
    assert data.model_validation_split(train, model, val_size=200, seed=3)[1] == described
    with pytest.raises(UserError, match=r"^--val-size 100: the model's record .*model\.json names a 200-image"):
        data.model_validation_split(train, model, val_size=100)
    with pytest.raises(UserError, match=r"^--seed 0: the model's record .* was trained with --seed 3"):
        data.model_validation_split(train, model, seed=0)


def test_a_record_from_before_the_split_seed_gets_its_seed_split(data_root, tmp_path):
    """Runs before the split had its own seed carved it with config.seed: that split, again."""
    train = data.load(data_root).train
    model = write_record(tmp_path, {"kind": "fit", "config": {"seed": 3, "val_size": 200}})
    val, description = data.model_validation_split(train, model)
    assert description == {"seed": 3, "size": 200, "sha256": OLD_SPLIT_SEED_3}
    assert sha256_of(positions(val.images, train.images)) == OLD_SPLIT_SEED_3


def test_without_a_record_the_default_split(data_root, tmp_path):
    train = data.load(data_root).train
    val, description = data.model_validation_split(train, tmp_path / "alone.keras", val_size=200, seed=5)
    assert description == {"seed": 0, "size": 200, "sha256": OLD_SPLIT_SEED_0}
    with pytest.raises(UserError, match="--val-size needs more than 50 images per class"):
        data.model_validation_split(train, tmp_path / "alone.keras")  # 5000 by default


@pytest.mark.parametrize("record, message", [
    ({"kind": "fit", "val_split": {"seed": 0, "size": 200, "sha256": "ab" * 32}},
     r"model\.json: its validation split \(seed 0, 200 images, sha256 abababababab\.\.\.\) is not the one carved "
     "from this data set; use the --data-dir the model was trained on$"),
    ({"kind": "evaluate", "split": "val"}, r"model\.json: names no validation split \(neither 'val_split' nor "
     r"'config\.val_size'\), so the split the model was scored on cannot be reproduced$"),
])
def test_a_record_whose_split_cannot_be_reproduced_is_refused_in_one_line(data_root, tmp_path, record, message):
    train = data.load(data_root).train
    with pytest.raises(UserError, match=message) as refused:
        data.model_validation_split(train, write_record(tmp_path, record))
    assert "\n" not in str(refused.value)


def test_train_subset_is_stratified(data_root):
    train = data.load(data_root).train
    rest, val = data.train_val_split(train, val_size=100, train_size=300, seed=0)
    assert (np.bincount(rest.fine, minlength=100) == 3).all()
    with pytest.raises(UserError, match="--train-size"):
        data.train_val_split(train, val_size=100, train_size=150)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real CIFAR-100 not beside the repo")
def test_real_data():
    d = data.load(REAL_DATA)
    assert len(d.train) == 50_000 and len(d.test) == 10_000
    assert (np.bincount(d.train.fine) == 500).all() and (np.bincount(d.test.fine) == 100).all()
    means = d.train.images.reshape(-1, 3).mean(axis=0) / 255
    assert np.allclose(means, data.MEAN, atol=1e-3)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real CIFAR-100 not beside the repo")
def test_shipped_class_names_match_the_real_meta():
    from cifar_keras.data import classes

    d = data.load(REAL_DATA)
    assert list(classes.FINE_NAMES) == d.fine_names and list(classes.COARSE_NAMES) == d.coarse_names
    assert (np.array(classes.FINE_TO_COARSE) == d.fine_to_coarse()).all()


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real CIFAR-100 not beside the repo")
def test_the_real_default_split_is_the_one_default_runs_were_scored_on():
    # sha256 of the sorted indices of the 5000-image split that the code of commit 92cd8bf carved at --seed 0.
    train = data.load(REAL_DATA).train
    assert data.describe_split(train.fine) == {
        "seed": 0, "size": 5000, "sha256": "a046b8a781bdc119267af6e924d319bb94275bab72df63c1f5cf68c83533e773"}
