import numpy as np
import pytest

from cifar_keras import data
from cifar_keras.pipeline import make_dataset


@pytest.fixture(scope="module")
def split(data_root):
    return data.load(data_root).train.take(np.arange(64))


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_eval_pipeline_is_the_raw_data_in_order(split):
    (x, y), = batches(make_dataset(split, 64))
    assert x.shape == (64, 32, 32, 3) and x.dtype == np.float32
    assert (x == split.images).all()
    assert y.shape == (64, 100) and (y.argmax(1) == split.fine).all() and (y.sum(1) == 1).all()


def test_training_batches_are_full_and_shuffled(split):
    out = batches(make_dataset(split, 24, training=True, crop_pad=0, flip=False))
    assert [len(x) for x, _ in out] == [24, 24]  # remainder dropped
    labels = np.concatenate([y.argmax(1) for _, y in out])
    assert not (labels == split.fine[:48]).all()


def test_seeded_pipeline_is_reproducible_and_changes_each_epoch(split):
    ds = make_dataset(split, 32, training=True, seed=7)
    epoch1, epoch2 = batches(ds), batches(ds)
    again = batches(make_dataset(split, 32, training=True, seed=7))
    assert all((a[0] == b[0]).all() for a, b in zip(epoch1, again))
    assert not (epoch1[0][0] == epoch2[0][0]).all()
    other_seed = batches(make_dataset(split, 32, training=True, seed=8))
    assert not (epoch1[0][0] == other_seed[0][0]).all()


def originals_by_label(split):
    return {int(label): image for image, label in zip(split.images, split.fine)}


def test_flip_only_gives_the_image_or_its_mirror(split):
    by_label = originals_by_label(split.take(np.unique(split.fine, return_index=True)[1]))
    unique = split.take(np.unique(split.fine, return_index=True)[1])
    flips = 0
    for x, y in batches(make_dataset(unique, len(unique), training=True, crop_pad=0, flip=True)):
        for image, label in zip(x, y.argmax(1)):
            original = by_label[int(label)].astype(np.float32)
            mirrored = (image == original[:, ::-1]).all()
            assert (image == original).all() or mirrored
            flips += mirrored
    assert 0 < flips < len(unique)


def test_crop_is_a_window_of_the_reflect_padded_image(split):
    unique = split.take(np.unique(split.fine, return_index=True)[1])
    by_label = originals_by_label(unique)
    shifted = 0
    for x, y in batches(make_dataset(unique, len(unique), training=True, crop_pad=4, flip=False)):
        for image, label in zip(x, y.argmax(1)):
            padded = np.pad(by_label[int(label)], ((4, 4), (4, 4), (0, 0)), mode="reflect").astype(np.float32)
            windows = [(r, c) for r in range(9) for c in range(9) if (padded[r:r + 32, c:c + 32] == image).all()]
            assert windows, "crop is not a window of the padded image"
            shifted += (4, 4) not in windows
    assert shifted > 0


def test_cutout_blanks_a_square(split):
    (x, _), = batches(make_dataset(split, 64, training=True, crop_pad=0, flip=False, cutout_size=8))
    zero_pixels = (x == 0).all(axis=3).sum(axis=(1, 2))
    # A centred 9x9 (size//2 either side) square, clipped at the borders.
    assert zero_pixels.max() == 81 and zero_pixels.min() >= 25
