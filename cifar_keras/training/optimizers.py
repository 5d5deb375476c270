"""The optimiser and its schedule (SGD-Nesterov, AdamW, Muon), and the compiled model of a run: shared by
`fit`, `tune` and `bench`."""

import math
import re

import keras

from cifar_keras import models


def make_schedule(config, steps_per_epoch, learning_rate=None):
    """Linear warm-up over `config.warmup` of the run's steps, then cosine or linear decay to zero."""
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup * total), total - 1)
    peak = learning_rate or config.learning_rate
    if config.decay == "linear":
        return LinearDecay(peak, warmup_steps=warmup, total_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total - warmup, 1), warmup_target=peak, warmup_steps=warmup)


@keras.saving.register_keras_serializable(package="cifar_keras")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`
    (the triangle of airbench and of "How to train your ResNet")."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        down = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        up = step / self.warmup_steps if self.warmup_steps else down
        return self.peak * keras.ops.clip(keras.ops.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class ConvMuon(keras.optimizers.Muon):
    """Keras' Muon, extended to convolutions: a (kh, kw, in, out) kernel's update is orthogonalised
    as a (kh*kw*in, out) matrix, as the Muon CIFAR speedruns do. Keras' Muon alone orthogonalises
    only 2-D kernels and sends the convolutions to AdamW. Kernels of layers named in
    `exclude_layers` (the classifier), BatchNorm parameters and biases use AdamW."""

    def _should_use_adamw(self, variable):
        if len(variable.shape) == 4:
            return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)
        return super()._should_use_adamw(variable)

    def zeropower_via_newtonschulz5(self, x, steps):
        if len(x.shape) != 4:
            return super().zeropower_via_newtonschulz5(x, steps)
        matrix = keras.ops.reshape(x, (-1, x.shape[-1]))
        return keras.ops.reshape(super().zeropower_via_newtonschulz5(matrix, steps), x.shape)

    def lr_adjust(self, x):
        if len(x.shape) != 4 or self.rms_rate is None:
            return super().lr_adjust(x)
        # Moonlight's update-size rule on the matrix the kernel was orthogonalised as.
        return x * math.sqrt(max(math.prod(x.shape[:-1]), x.shape[-1])) * self.rms_rate


def make_optimizer(config, steps_per_epoch, learning_rate=None):
    """SGD-Nesterov, AdamW or Muon under the run's schedule; no weight decay on BatchNorm parameters
    or biases."""
    schedule = make_schedule(config, steps_per_epoch, learning_rate)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    elif config.optimizer == "muon":
        # One weight decay for both parts (decoupled, times the learning rate, as AdamW's).
        optimizer = ConvMuon(schedule, weight_decay=config.weight_decay, adam_weight_decay=config.weight_decay,
                             exclude_layers=["logits"])
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    # Decaying BatchNorm scales and biases only fights the normalisation.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def compile_model(model, config, steps_per_epoch, learning_rate=None):
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        # Weighted: the same names and values without sample weights, and exact on the padded, weighted
        # validation batches of a cluster (pipeline.padded_dataset); Keras' plain `metrics` ignore weights.
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                          keras.metrics.TopKCategoricalAccuracy(5, name="top5")],
        jit_compile=JIT_COMPILE[config.jit_compile],
    )


JIT_COMPILE = {"auto": "auto", "on": True, "off": False}  # --jit-compile -> Keras' compile(jit_compile=...)


WHITENING_IMAGES = 5000  # as airbench: enough for a 12x12 covariance


def build_model(config, train_images=None):
    """The model of `config` as it trains, its data-dependent layers set from `train_images` (if given)."""
    model = models.get_spec(config.model).build(**config.model_args)
    if train_images is not None:
        models.whiten_from_data(model, train_images[:WHITENING_IMAGES])
    if config.low_res:
        model = models.with_input_size(model, None)  # trains on smaller images first; saved at 32 x 32
    return model


def build_compiled(config, steps_per_epoch, learning_rate=None, train_images=None):
    """build_model, compiled."""
    model = build_model(config, train_images)
    compile_model(model, config, steps_per_epoch, learning_rate)
    return model
