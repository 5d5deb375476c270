"""tf.data input pipelines: shuffle, batch, augment (vectorised over the batch), prefetch.

Images stay uint8 until the end of the map; the model does its own normalisation.
Augmentation uses stateless random ops keyed by a seeded random stream, so a seeded
run sees the same batches and the same crops/flips every time.
"""

import tensorflow as tf

from cifar_keras.data import NUM_CLASSES


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
    """Zero a random size x size square in each image (DeVries & Taylor, 2017)."""
    n, height = tf.shape(images)[0], images.shape[1]
    centre = tf.random.stateless_uniform([n, 2], seed, 0, height, dtype=tf.int32)
    grid = tf.range(height)
    inside_rows = tf.abs(grid[None, :] - centre[:, :1]) <= size // 2
    inside_cols = tf.abs(grid[None, :] - centre[:, 1:]) <= size // 2
    mask = inside_rows[:, :, None] & inside_cols[:, None, :]
    return tf.where(mask[..., None], tf.zeros_like(images), images)


def augment(images, seed, crop_pad=4, flip=True, cutout_size=0):
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if crop_pad:
        images = random_crop(images, crop_pad, seeds[0])
    if flip:
        images = random_flip(images, seeds[1])
    if cutout_size:
        images = cutout(images, cutout_size, seeds[2])
    return images


def make_dataset(split, batch_size, training=False, seed=0, crop_pad=4, flip=True, cutout_size=0):
    """(images float32 0-255, one-hot labels) batches; shuffled and augmented when training."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.fine))
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    if training:
        # One int64 per batch from a seeded stream that changes every epoch.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, keys)

        def train_map(batch, key):
            images, labels = batch
            images = augment(images, tf.stack([key, tf.constant(seed, tf.int64)]), crop_pad, flip, cutout_size)
            return tf.cast(images, tf.float32), tf.one_hot(labels, NUM_CLASSES)

        ds = ds.map(train_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, NUM_CLASSES)))
    return ds.prefetch(tf.data.AUTOTUNE)
