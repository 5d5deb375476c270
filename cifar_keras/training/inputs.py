"""A run's inputs: the data set and its train/validation splits, the seeded training batches of each epoch, and
the validation batches of fit."""

import math

from cifar_keras import data
from cifar_keras.data.pipeline import make_dataset, padded_dataset, train_batches


def build_inputs(config, data_dir):
    """The data set and the run's train/validation splits."""
    dataset = data.load(data_dir)
    train, val = data.train_val_split(dataset.train, config.val_size, config.train_size, config.seed)
    return dataset, train, val


def training_data(split, config, batch_size, first_epoch=0, epochs=None):
    """The seeded, augmented training batches of epochs [first_epoch, epochs)."""
    return train_batches(split, batch_size, seed=config.seed, first_epoch=first_epoch,
                         epochs=config.epochs if epochs is None else epochs,
                         crop_pad=config.crop_pad, flip=config.flip, cutout_size=config.cutout_size,
                         noise=config.noise, jpeg=config.jpeg, low_res=config.low_res,
                         low_res_epochs=config.low_res_epochs)


def phases(config, first_epoch=0):
    """The run's epochs [first_epoch, config.epochs) as (first, last) ranges of one image size each: with
    progressive resizing, the low-resolution epochs and then the full-size ones; each is fitted from a dataset of
    its own, so that each traces a graph of static shape (one graph for both sizes runs slower)."""
    cut = config.low_res_epochs if config.low_res else 0
    bounds = [first_epoch] + [e for e in (cut,) if first_epoch < e < config.epochs] + [config.epochs]
    return list(zip(bounds, bounds[1:]))


def validation_batches(split, plan):
    """(dataset, steps) of the validation split for fit: batches of 500 (steps: None, all of them); for a cluster,
    padded static batches (a multiple of the devices) that Keras shards between the processes, whose loss and
    metrics are still those of the whole split, repeated and counted (the sharded dataset's length is unknown
    to Keras)."""
    if plan.processes == 1:
        return make_dataset(split, 500), None
    batch = plan.replicas * math.ceil(min(500, len(split)) / plan.replicas)
    return padded_dataset(split, batch).repeat(), math.ceil(len(split) / batch)
