import numpy as np
import pytest
import tensorflow as tf

from cifar_keras import data
from cifar_keras.data.pipeline import augment, cutout, gaussian_noise, make_dataset, train_batches


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
    out = batches(train_batches(split, 24, crop_pad=0, flip=False))
    assert [len(x) for x, _ in out] == [24, 24]  # one epoch of 64 // 24 full batches: remainder dropped
    assert all(x.dtype == np.float32 and y.shape == (24, 100) for x, y in out)
    labels = np.concatenate([y.argmax(1) for _, y in out])
    assert not (labels == split.fine[:48]).all()
    # Not augmented here: each batch holds 48 distinct images of the split, with their labels.
    originals = {image.tobytes(): label for image, label in zip(split.images.astype(np.float32), split.fine)}
    seen = [image.tobytes() for x, _ in out for image in x]
    assert len(set(seen)) == 48 and [originals[image] for image in seen] == list(labels)


def test_seeded_pipeline_is_reproducible_and_changes_each_epoch(split):
    ds = train_batches(split, 32, seed=7, epochs=2)
    out = batches(ds)
    assert len(out) == 4  # two epochs of 64 // 32 batches
    epoch1, epoch2 = out[:2], out[2:]
    again = batches(train_batches(split, 32, seed=7, epochs=2))
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(out, again))
    # Iterating the same dataset again gives the same batches too (stateless random ops).
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(out, batches(ds)))
    assert not (epoch1[0][0] == epoch2[0][0]).all()
    other_seed = batches(train_batches(split, 32, seed=8, epochs=2))
    assert not (epoch1[0][0] == other_seed[0][0]).all()


def test_a_later_epoch_is_the_same_whether_or_not_earlier_epochs_ran(split):
    # Every random op on: shuffle, crop, flip and cutout.
    options = dict(seed=3, crop_pad=4, flip=True, cutout_size=8)
    full = batches(train_batches(split, 16, first_epoch=0, epochs=3, **options))
    resumed = batches(train_batches(split, 16, first_epoch=1, epochs=3, **options))
    assert len(full) == 12 and len(resumed) == 8  # 64 // 16 = 4 batches an epoch
    for (x, y), (x_full, y_full) in zip(resumed, full[4:]):
        assert (x == x_full).all() and (y == y_full).all()
    # Epoch 1 is not a replay of epoch 0: another order and other augmentations.
    epoch0, epoch1 = full[:4], full[4:8]
    labels = [np.concatenate([y.argmax(1) for _, y in epoch]) for epoch in (epoch0, epoch1)]
    assert sorted(labels[0]) == sorted(labels[1]) and not (labels[0] == labels[1]).all()
    assert all(not (a[0] == b[0]).all() for a, b in zip(epoch0, epoch1))


def originals_by_label(split):
    return {int(label): image for image, label in zip(split.images, split.fine)}


def test_flip_only_gives_the_image_or_its_mirror(split):
    by_label = originals_by_label(split.take(np.unique(split.fine, return_index=True)[1]))
    unique = split.take(np.unique(split.fine, return_index=True)[1])
    flips = 0
    for x, y in batches(train_batches(unique, len(unique), crop_pad=0, flip=True)):
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
    for x, y in batches(train_batches(unique, len(unique), crop_pad=4, flip=False)):
        for image, label in zip(x, y.argmax(1)):
            padded = np.pad(by_label[int(label)], ((4, 4), (4, 4), (0, 0)), mode="reflect").astype(np.float32)
            windows = [(r, c) for r in range(9) for c in range(9) if (padded[r:r + 32, c:c + 32] == image).all()]
            assert windows, "crop is not a window of the padded image"
            shifted += (4, 4) not in windows
    assert shifted > 0


def zeroed_boxes(images):
    """Per image: (zeroed pixels, height and width of their bounding box, whether it touches the border)."""
    zero = images == 0
    # Cutout blanks every channel of a pixel, or none of them.
    assert (zero.all(axis=3) == zero.any(axis=3)).all()
    boxes = []
    for mask in zero.all(axis=3):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        border = rows[0] == 0 or cols[0] == 0 or rows[-1] == 31 or cols[-1] == 31
        boxes.append((mask.sum(), height, width, border))
    return boxes


@pytest.mark.parametrize("size", [8, 5])
def test_cutout_blanks_exactly_a_size_by_size_square(size):
    images = tf.ones([256, 32, 32, 3], tf.uint8)  # no zeros but those cutout makes
    boxes = zeroed_boxes(cutout(images, size, tf.constant([3, 4], tf.int64)).numpy())
    inner = [box for box in boxes if not box[3]]
    assert len(inner) > 100  # most centres are far enough from the border
    assert all(box[:3] == (size * size, size, size) for box in inner)
    # Near the border the square is clipped, never grown; the centre stays in the image.
    for count, height, width, _ in boxes:
        assert count == height * width  # a filled rectangle
        assert (size + 1) // 2 <= min(height, width) and max(height, width) <= size


def test_augment_applies_cutout_of_the_asked_size(split):
    x = augment(tf.constant(split.images), tf.constant([5, 6], tf.int64), crop_pad=0, flip=False, cutout_size=8)
    boxes = zeroed_boxes(x.numpy())  # the synthetic images have no all-zero pixels of their own
    assert max(count for count, *_ in boxes) == 64 and min(count for count, *_ in boxes) >= 16


def test_gaussian_noise_leaves_half_the_images_clean_and_spreads_the_rest():
    images = tf.fill([2000, 32, 32, 3], 128.0)  # mid-grey: no clipping at these noise levels
    out = gaussian_noise(images, 0.1, tf.constant([1, 2], tf.int64)).numpy()
    assert out.dtype == np.float32 and (out == np.round(out)).all() and out.min() >= 0 and out.max() <= 255
    std = (out - 128).reshape(2000, -1).std(axis=1)
    clean = std < 1.0  # rounding hides noise below ~0.3 grey levels
    assert 0.45 < clean.mean() < 0.6
    noisy = std[~clean]
    # Uniform in [0, 25.5] grey levels: mean ~12.75, nothing beyond the maximum (plus sampling error).
    assert 11.5 < noisy.mean() < 14.0 and noisy.max() < 25.5 * 1.05 and noisy.min() < 3
    again = gaussian_noise(images, 0.1, tf.constant([1, 2], tf.int64)).numpy()
    assert (out == again).all()


def test_training_noise_adds_to_the_same_crops_and_flips(split):
    options = dict(seed=4, crop_pad=4, flip=True)
    (clean, y_clean), = batches(train_batches(split, 64, **options))
    (noisy, y_noisy), = batches(train_batches(split, 64, noise=0.2, **options))
    assert (y_clean == y_noisy).all()
    diff = np.abs(noisy - clean).reshape(64, -1).mean(axis=1)
    assert 10 < (diff == 0).sum() < 54 and diff.max() > 5  # about half the images untouched, the rest noisy


def test_low_res_epochs_are_area_downscaled_then_full_size(split):
    plain = batches(train_batches(split, 32, seed=3, epochs=2, crop_pad=0, flip=False))
    small = batches(train_batches(split, 32, seed=3, epochs=2, crop_pad=0, flip=False, low_res=16, low_res_epochs=1))
    assert [x.shape[1:3] for x, _ in small] == [(16, 16), (16, 16), (32, 32), (32, 32)]
    for (x, y), (x_small, y_small) in zip(plain[:2], small[:2]):  # the same images, each 2 x 2 block averaged
        assert (y == y_small).all()
        blocks = x.reshape(32, 16, 2, 16, 2, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(x_small, blocks, atol=1e-3)
    for (x, _), (x_small, _) in zip(plain[2:], small[2:]):
        assert (x == x_small).all()
    # Each size's epochs on their own have a static shape (a graph traced for them knows its height and width).
    options = dict(seed=3, crop_pad=0, flip=False, low_res=16, low_res_epochs=1)
    assert train_batches(split, 32, epochs=1, **options).element_spec[0].shape == (32, 16, 16, 3)
    assert train_batches(split, 32, first_epoch=1, epochs=2, **options).element_spec[0].shape == (32, 32, 32, 3)
    later = batches(train_batches(split, 32, first_epoch=1, epochs=2, **options))
    for (x, _), (x_later, _) in zip(small[2:], later):  # epoch 1 alone is epoch 1 of the whole run
        assert (x == x_later).all()


def smooth_images(n, seed=0):
    """Photos' kind of content (smooth colour gradients), which JPEG keeps close at high quality."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 32)
    base = rng.uniform(40, 200, (n, 1, 1, 3)) + rng.uniform(-40, 40, (n, 1, 1, 3)) * ramp[None, :, None, None]
    return np.clip(base + rng.uniform(-30, 30, (n, 1, 1, 3)) * ramp[None, None, :, None], 0, 255).astype(np.uint8)


def pil_jpeg(image, quality):
    """An independent JPEG round trip: Pillow's encoder and decoder."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(buffer))


def test_jpeg_reencodes_half_the_images_at_a_quality_in_range_and_keeps_the_other_augmentations(split):
    from cifar_keras.data.pipeline import jpeg_reencode

    images = smooth_images(400)
    seed = tf.constant([3, 4], tf.int64)
    out = jpeg_reencode(tf.constant(images), 60, seed).numpy()
    changed = np.any(out != images, axis=(1, 2, 3))
    assert 0.4 < changed.mean() < 0.6  # a random half (binomial: 200 +- 10)
    assert np.array_equal(out, jpeg_reencode(tf.constant(images), 60, seed).numpy())  # seeded
    for image, encoded in zip(images[changed][:15], out[changed][:15]):
        # Some quality in [60, 95] gives Pillow's round trip within 1.5 grey levels on average, quality 20 does not.
        errors = {q: np.abs(pil_jpeg(image, q).astype(int) - encoded).mean() for q in range(20, 96)}
        best = min(errors, key=errors.get)
        assert 60 <= best <= 95 and errors[best] < 1.5 < errors[20], (best, errors[best], errors[20])
    # The crops, flips and cutout of a batch are those without --jpeg: only the re-encoded images differ.
    batch = tf.constant(split.images[:64])
    plain, with_jpeg = augment(batch, seed, cutout_size=8).numpy(), augment(batch, seed, cutout_size=8, jpeg=60).numpy()
    same = np.all(plain == with_jpeg, axis=(1, 2, 3))
    assert 0.25 < same.mean() < 0.75
    assert np.abs(plain[~same] - with_jpeg[~same]).mean() < 40


def test_jpeg_training_batches_are_reproducible(split):
    first = [x.numpy() for x, _ in train_batches(split, 50, seed=1, epochs=1, jpeg=40)]
    again = [x.numpy() for x, _ in train_batches(split, 50, seed=1, epochs=1, jpeg=40)]
    plain = [x.numpy() for x, _ in train_batches(split, 50, seed=1, epochs=1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, plain))
