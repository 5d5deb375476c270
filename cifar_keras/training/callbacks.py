"""The callbacks of a training run: epoch timing, the weight average, the time-left estimate, and early
stopping that survives a resume."""

import sys
import time

import keras
import numpy as np


def verbosity():
    """Keras' progress bar on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


class EpochTimer(keras.callbacks.Callback):
    """Adds `train_time` (the epoch's training steps) and `epoch_time` (with validation) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_time = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.train_time is None:
            self.train_time = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_time"] = time.perf_counter() - self.start
        logs["train_time"] = self.train_time or logs["epoch_time"]


class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of all of a model's weights, BatchNorm statistics included (Keras'
    optimizer EMA covers only trainable variables, so its BatchNorm statistics would not match).

    Updated every `every` steps with decay**every; a resumed run restarts the average from the
    restored weights.
    """

    def __init__(self, decay, every=5):
        super().__init__()
        self.decay, self.every, self.weights, self.steps = decay, every, None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps % self.every:
            return
        current = self.model.get_weights()
        if self.weights is None:
            self.weights = [w.copy() for w in current]
            return
        keep = self.decay ** self.every
        for i, value in enumerate(current):
            if np.issubdtype(value.dtype, np.floating):  # not counters or random-generator states
                self.weights[i] = keep * self.weights[i] + (1 - keep) * value
            else:
                self.weights[i] = value


class WallTimeEstimate(keras.callbacks.Callback):
    """Prints, once, the run's expected training time from its first timed steps (after compilation)."""

    def __init__(self, steps_per_epoch, epochs, first_epoch, skip=3, timed=10, note=""):
        super().__init__()
        self.steps_per_epoch, self.epochs, self.first_epoch, self.note = steps_per_epoch, epochs, first_epoch, note
        self.skip, self.timed = min(skip, steps_per_epoch - 1), min(timed, max(steps_per_epoch - skip - 1, 1))
        self.seen, self.start = 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.skip:
            self.start = time.perf_counter()
        elif self.start is not None and self.seen == self.skip + self.timed:
            per_step = (time.perf_counter() - self.start) / self.timed
            left = per_step * self.steps_per_epoch * (self.epochs - self.first_epoch)
            estimate = f"{left / 60:.0f} min" if left >= 120 else f"{left:.0f} s"
            print(f"fit: about {estimate} of training steps left ({per_step * 1000:.0f} ms/step, "
                  f"validation not counted{self.note})", flush=True)
            self.start = None


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping on validation top-1 that carries on counting across a resume: its best score and the epochs
    since then start from `history`, the validation top-1 of the epochs already finished."""

    def __init__(self, patience, history=()):
        super().__init__("val_accuracy", mode="max", patience=patience)
        self.history = list(history)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.history:
            best = int(np.argmax(self.history))
            self.best, self.wait = self.history[best], len(self.history) - 1 - best

