"""tf.data input pipelines: shuffle, batch, augment (vectorised over the batch), prefetch.

Images stay uint8 until the end of the geometric augmentations (pixel noise is added in float32);
the model does its own normalisation.
Shuffling and augmentation use stateless random ops keyed by (seed, epoch, step), so a
seeded run sees the same batches and the same crops/flips every time, resumed or not.
"""

import numpy as np
import tensorflow as tf

from cifar_keras.data.cifar100 import NUM_CLASSES


def random_crop(images, pad, seed):
    """Pad by `pad` pixels (reflect) and cut a random 32x32 window from each image."""
    size = images.shape[1]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed, 0, 2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size)[None, :]
    cols = offsets[:, 1:] + tf.range(size)[None, :]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def random_flip(images, seed):
    flip = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def cutout(images, size, seed):
    """Zero a random size x size square in each image (DeVries & Taylor, 2017).

    The centre is uniform over the image, so squares near the border are clipped.
    """
    n, height = tf.shape(images)[0], images.shape[1]
    centre = tf.random.stateless_uniform([n, 2], seed, 0, height, dtype=tf.int32)
    # Half-open [start, start + size): exactly `size` rows/columns, also for even sizes.
    start = centre - size // 2
    grid = tf.range(height)[None, :]
    inside_rows = (grid >= start[:, :1]) & (grid < start[:, :1] + size)
    inside_cols = (grid >= start[:, 1:]) & (grid < start[:, 1:] + size)
    mask = inside_rows[:, :, None] & inside_cols[:, None, :]
    return tf.where(mask[..., None], tf.zeros_like(images), images)


def gaussian_noise(images, max_std, seed):
    """Add Gaussian pixel noise to a random half of float32 `images` (0-255), each noisy image's standard deviation
    drawn uniformly from [0, `max_std`] x 255, then clip and round to 8-bit values as a noisy photo would be.

    Keeping half of the images clean keeps clean accuracy while the net learns to ignore noise, which also
    carries over to other corruptions (Rusak et al., ECCV 2020)."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    std = tf.random.stateless_uniform([n, 1, 1, 1], seeds[0], 0.0, max_std * 255.0)
    std = tf.where(tf.random.stateless_uniform([n, 1, 1, 1], seeds[1]) < 0.5, std, 0.0)
    noisy = images + std * tf.random.stateless_normal(tf.shape(images), seeds[2])
    return tf.round(tf.clip_by_value(noisy, 0.0, 255.0))


JPEG_MAX_QUALITY = 95  # the best quality --jpeg draws: about what cameras and phones save


def jpeg_reencode(images, min_quality, seed):
    """Re-encode a random half of uint8 `images` as JPEG, each at a quality drawn uniformly from
    [`min_quality`, JPEG_MAX_QUALITY], and decode them again, as a photo saved by a camera or a web page would be
    (CIFAR-100-C's jpeg_compression: quality 80 to 40)."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    quality = tf.random.stateless_uniform([n], seeds[0], min_quality, JPEG_MAX_QUALITY + 1, dtype=tf.int32)
    chosen = tf.random.stateless_uniform([n], seeds[1]) < 0.5
    encoded = tf.map_fn(lambda pair: tf.image.adjust_jpeg_quality(pair[0], pair[1]), (images, quality),
                        fn_output_signature=tf.uint8)
    return tf.where(chosen[:, None, None, None], encoded, images)


def augment(images, seed, crop_pad=4, flip=True, cutout_size=0, noise=0.0, size=None, jpeg=0):
    """The training augmentations of uint8 `images`, as float32 0-255; downscaled to `size` x `size` pixels
    (area averaging, before the noise, as a smaller photo's pixels would be) where `size` (an int) is smaller
    than the images."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if crop_pad:
        images = random_crop(images, crop_pad, seeds[0])
    if flip:
        images = random_flip(images, seeds[1])
    if cutout_size:
        images = cutout(images, cutout_size, seeds[2])
    if jpeg:  # its own key, so that the other augmentations draw what they drew before the option existed
        images = jpeg_reencode(images, jpeg, tf.random.experimental.stateless_fold_in(seed, 4))
    images = tf.cast(images, tf.float32)
    if size and size < images.shape[1]:
        images = tf.image.resize(images, [size, size], method="area")
    if noise:
        images = gaussian_noise(images, noise, seeds[3])
    return images


def train_batches(split, batch_size, seed=0, first_epoch=0, epochs=1, crop_pad=4, flip=True, cutout_size=0,
                  noise=0.0, low_res=0, low_res_epochs=0, jpeg=0):
    """Shuffled, augmented training batches (images float32 0-255, one-hot labels) of epochs [first_epoch, epochs).

    With `low_res`, the images of the first `low_res_epochs` epochs are downscaled to low_res x low_res
    pixels (progressive resizing). Each epoch's batches have a static shape; a dataset whose epochs span both
    sizes has batches of unknown height and width, so a run trains each size's epochs from a dataset of their
    own (training/inputs.py, `phases`) and traces a static graph for each.

    Epoch e's order and augmentation depend only on (seed, e), not on how many times the
    data was iterated before, so a run resumed at epoch e sees exactly the batches an
    uninterrupted run sees. Each epoch holds len(split) // batch_size full batches: pass
    that as `steps_per_epoch` to fit.
    """
    images, labels = tf.constant(split.images), tf.constant(split.fine)
    steps = len(split) // batch_size

    def epoch_batches(epoch, size):
        order = tf.random.experimental.stateless_shuffle(tf.range(len(split)), seed=tf.stack([seed, epoch]))
        batches = tf.reshape(order[: steps * batch_size], [steps, batch_size])

        def make_batch(step, index):
            key = tf.stack([tf.constant(seed, tf.int64), epoch * steps + step])
            batch = augment(tf.gather(images, index), key, crop_pad, flip, cutout_size, noise, size, jpeg)
            return batch, tf.one_hot(tf.gather(labels, index), NUM_CLASSES)

        return tf.data.Dataset.from_tensor_slices(batches).enumerate().map(
            make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def epoch_range(first, last, size=None):
        return tf.data.Dataset.range(first, last).flat_map(lambda epoch: epoch_batches(epoch, size))

    low_res_end = min(low_res_epochs, epochs) if low_res else first_epoch
    if first_epoch >= low_res_end:
        batches = epoch_range(first_epoch, epochs)
    elif low_res_end == epochs:
        batches = epoch_range(first_epoch, epochs, low_res)
    else:
        batches = epoch_range(first_epoch, low_res_end, low_res).concatenate(epoch_range(low_res_end, epochs))
    return batches.prefetch(tf.data.AUTOTUNE)


def make_dataset(split, batch_size):
    """(images float32 0-255, one-hot labels) batches in order, not augmented: for evaluation."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.fine)).batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, NUM_CLASSES)))
    return ds.prefetch(tf.data.AUTOTUNE)


def padded_dataset(split, batch_size):
    """make_dataset's batches plus per-image weights, every batch exactly `batch_size` images (Keras shards a
    dataset between the processes of a cluster only when its batch size is static): blank images of weight 0
    fill the last batch, and the split's own images weigh padded/real each, so that the mean loss Keras reports
    (per batch: the weighted sum over the batch size) and its weighted metrics are those of the split alone."""
    real = len(split)
    total = -(-real // batch_size) * batch_size
    pad = total - real
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), split.images.dtype)])
    labels = np.concatenate([split.fine, np.zeros(pad, split.fine.dtype)])
    weights = np.concatenate([np.full(real, total / real, np.float32), np.zeros(pad, np.float32)])
    ds = tf.data.Dataset.from_tensor_slices((images, labels, weights)).batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, y, w: (tf.cast(x, tf.float32), tf.one_hot(y, NUM_CLASSES), w))
    return ds.prefetch(tf.data.AUTOTUNE)


def predict_outputs(model, images, batch_size=500):
    """A model's outputs (float64) for uint8 `images` (N, 32, 32, 3), in order, batch by batch."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(lambda x: tf.cast(x, tf.float32))
    return np.asarray(model.predict(ds.prefetch(tf.data.AUTOTUNE), verbose=0), dtype=np.float64)
