"""Throughput probes: images/s of the input pipeline, of training steps and of inference, on this machine."""

import time

import keras

from cifar_keras.data.pipeline import predict_outputs


def pipeline_throughput(dataset, batches=40):
    """Images/s of the input pipeline alone (no model), over the first `batches` batches."""
    start, count = time.perf_counter(), 0
    for images, _ in dataset.take(batches):
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


class StepTimer(keras.callbacks.Callback):
    """Wall time from the end of step `skip` to the end of the last step: the steps alone, without fit's
    start-up and the first steps' tracing."""

    def __init__(self, skip):
        super().__init__()
        self.skip, self.start, self.end = skip, None, None

    # Keras hands a callback that overrides on_train_batch_end logs converted to Python floats, which waits for each
    # step to finish (JAX dispatches steps asynchronously).
    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.skip:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def train_throughput(model, dataset, batch_size, steps=5, warmup=2, timer=None, callbacks=()):
    """Images/s of fit() steps of a compiled model, timed after `warmup` untimed steps (compilation) by `timer`
    (default: a StepTimer(warmup)), with `callbacks` running as in the run. The steps train `model`: time a
    throw-away copy when the run itself must not be affected."""
    dataset = dataset.repeat()  # a small split may hold fewer batches than warm-up plus timed steps
    timer = timer or StepTimer(warmup)
    model.fit(dataset.take(warmup + steps), epochs=1, verbose=0, shuffle=False, callbacks=[*callbacks, timer])
    return batch_size * steps / (timer.end - timer.start)


def inference_time(model, images, batch_size=500):
    """(seconds per image, seconds of the first pass's tracing) of predict_outputs(model, images): timed on a
    second pass, after a first one that also traces the prediction function."""
    start = time.perf_counter()
    predict_outputs(model, images, batch_size)
    first = time.perf_counter() - start
    start = time.perf_counter()
    predict_outputs(model, images, batch_size)
    second = time.perf_counter() - start
    return second / len(images), max(first - second, 0.0)
