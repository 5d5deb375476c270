"""`fit`: train a registered model on the training split, select on validation, test once, record.

The stages read top to bottom in `fit`: prepare the run folder -> build the inputs ->
plan -> train -> finalise (float32 rebuild, TTA, calibration, evaluation, save) -> record.
"""

import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from cifar_keras import records
from cifar_keras.evaluation import calibration
from cifar_keras import data
from cifar_keras.models import flops
from cifar_keras import models
from cifar_keras.distributed import multiworker
from cifar_keras import hardware
from cifar_keras.config import check_low_res, upgrade
from cifar_keras.errors import UserError
from cifar_keras.evaluation.metrics import evaluate_model, metrics
from cifar_keras.data.pipeline import make_dataset, padded_dataset, train_batches


# --- optimiser and compile: shared with `tune` and `bench` -------------------------------------

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
    )


WHITENING_IMAGES = 5000  # as airbench: enough for a 12x12 covariance


def build_compiled(config, steps_per_epoch, learning_rate=None, train_images=None):
    """The model of `config`, its data-dependent layers set from `train_images` (if given), compiled."""
    model = models.get_spec(config.model).build(**config.model_args)
    if train_images is not None:
        models.whiten_from_data(model, train_images[:WHITENING_IMAGES])
    if config.low_res:
        model = models.with_input_size(model, None)  # trains on smaller images first; saved at 32 x 32
    compile_model(model, config, steps_per_epoch, learning_rate)
    return model


def training_data(split, config, batch_size, first_epoch=0, epochs=None):
    """The seeded, augmented training batches of epochs [first_epoch, epochs)."""
    return train_batches(split, batch_size, seed=config.seed, first_epoch=first_epoch,
                         epochs=config.epochs if epochs is None else epochs,
                         crop_pad=config.crop_pad, flip=config.flip, cutout_size=config.cutout_size,
                         noise=config.noise, low_res=config.low_res, low_res_epochs=config.low_res_epochs)


def verbosity():
    """Keras' progress bar on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


# --- throughput probes ---------------------------------------------------------------------------

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


def train_throughput(model, dataset, batch_size, steps=5, warmup=2, timer=None):
    """Images/s of fit() steps of a compiled model, timed after `warmup` untimed steps (compilation) by `timer`
    (default: a StepTimer(warmup)). The steps train `model`: time a throw-away copy when the run itself must not be
    affected."""
    dataset = dataset.repeat()  # a small split may hold fewer batches than warm-up plus timed steps
    timer = timer or StepTimer(warmup)
    model.fit(dataset.take(warmup + steps), epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return batch_size * steps / (timer.end - timer.start)


def epochs_in_budget(budget_s, seconds_per_epoch, within=True):
    """Whole epochs that fit in `budget_s` (within: never more; else the nearest number), at least one."""
    epochs = budget_s / seconds_per_epoch
    return max(1, math.floor(epochs + 1e-9) if within else round(epochs))


def measure_epoch_time(config, train_split, val_split, batch_size, learning_rate, scope):
    """Seconds of one epoch's training steps and of the rest of an epoch (a validation pass, checkpoints),
    timed on a throw-away model."""
    with scope():
        probe = build_compiled(config, len(train_split) // batch_size, learning_rate)
        images_per_s = train_throughput(probe, training_data(train_split, config, batch_size, epochs=1), batch_size,
                                        steps=8, warmup=2)
        sample = val_split.take(np.arange(min(len(val_split), 1000)))
        probe.evaluate(make_dataset(sample, 500), verbose=0)  # compiles the test step
        start = time.perf_counter()
        probe.evaluate(make_dataset(sample, 500), verbose=0)
    val_s = (time.perf_counter() - start) * len(val_split) / len(sample)
    with tempfile.TemporaryDirectory() as scratch:  # each epoch also writes a backup and maybe a best checkpoint
        start = time.perf_counter()
        probe.save_weights(Path(scratch) / "probe.weights.h5")
        val_s += 2 * (time.perf_counter() - start)
    steps = len(train_split) // batch_size
    return {"train_images_per_s": images_per_s, "train_s_per_epoch": steps * batch_size / images_per_s,
            "val_s_per_epoch": val_s}


def plan_time_budget(plan, train_split, val_split, scope):
    """The epochs that fit `config.time_budget` minutes on this machine, measured once per run: a resumed
    run reuses the first measurement, so its schedule is the one it started with."""
    saved = plan.paths["best"].parent / "time_budget.json"
    if plan.first_epoch and saved.exists():
        return json.loads(saved.read_text())
    started = time.perf_counter()
    speed = measure_epoch_time(plan.config, train_split, val_split, plan.global_batch_size, plan.learning_rate, scope)
    # The measurement itself is spent from the budget.
    budget_s = 60 * plan.config.time_budget - (time.perf_counter() - started)
    epochs = epochs_in_budget(budget_s, speed["train_s_per_epoch"] + speed["val_s_per_epoch"])
    if epochs * (speed["train_s_per_epoch"] + speed["val_s_per_epoch"]) > budget_s:
        print(f"fit: warning: one epoch takes longer than the {plan.config.time_budget} min budget", flush=True)
    budget = {"minutes": plan.config.time_budget, "measured": {k: round(v, 3) for k, v in speed.items()},
              "measurement_s": round(time.perf_counter() - started, 1), "planned_epochs": epochs}
    saved.write_text(json.dumps(budget))
    return budget


# --- callbacks -----------------------------------------------------------------------------------

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


# --- the stages of a run -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's config resolved against this machine and its data: what `train` needs and the record states."""

    config: object  # config.RunConfig
    name: str
    paths: dict
    precision: str
    replicas: int
    global_batch_size: int
    learning_rate: float  # peak, scaled with the replicas (linear scaling rule)
    steps_per_epoch: int
    first_epoch: int  # > 0 when resuming
    processes: int = 1  # of a cluster (--distribute multiworker): each feeds its share of every global batch
    primary: bool = True  # process 0, the one that writes files (a single process is)


def run_paths(output_dir, name):
    output_dir = Path(output_dir)
    work = output_dir / ".work" / name
    return {"model": output_dir / f"{name}.keras", "record": output_dir / f"{name}.json",
            "log": output_dir / f"{name}.log.csv", "best": work / "best.weights.h5", "backup": work / "backup"}


def finished_epochs(backup_dir):
    """Epochs already trained by an interrupted run, from BackupAndRestore's own metadata (0: a new run)."""
    metadata = Path(backup_dir) / "training_metadata.json"
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def prepare_run_folder(output_dir, name, config):
    """Paths of the run's files, and the epochs an interrupted run already trained.

    A new run starts without stale logs or checkpoints; a resumed run keeps the log rows of
    the epochs its backup holds and drops any row written after (the backup is the truth).
    Only the same config resumes: another one would continue the old weights under a new recipe.
    """
    paths = run_paths(output_dir, name)
    done = finished_epochs(paths["backup"])
    saved = paths["best"].parent / "config.json"
    # Options added since the interrupted run started ran at their defaults there (config.upgrade).
    if done and saved.exists() and upgrade(json.loads(saved.read_text())) != json.loads(json.dumps(config.to_dict())):
        raise UserError(f"{saved.parent}: an interrupted run of '{name}' with another config is there; rerun it "
                        "with its own options to resume it, or delete that folder (or use another --name)")
    if done == 0:
        shutil.rmtree(paths["backup"], ignore_errors=True)
        paths["log"].unlink(missing_ok=True)
        paths["best"].unlink(missing_ok=True)
    elif paths["log"].exists():
        lines = paths["log"].read_text().splitlines(keepends=True)
        paths["log"].write_text("".join(lines[:1 + done]))
    paths["best"].parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(config.to_dict()))
    return paths, done


def prepare_shared_run_folder(team, output_dir, name, config):
    """prepare_run_folder for every process of a cluster: process 0 prepares its run folder (resuming as a single
    process does) and sends the others its working files (checkpoints, backup, log), which they keep in their
    private scratch folder: every process resumes from the same state, and only process 0 writes in the output
    folder."""
    if team.processes == 1:
        return prepare_run_folder(output_dir, name, config)

    def prepare():
        paths, first_epoch = prepare_run_folder(output_dir, name, config)
        work = paths["best"].parent
        files = {f"work/{p.relative_to(work)}": p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}
        if paths["log"].exists():
            files["log"] = paths["log"].read_bytes()
        return first_epoch, files

    first_epoch, files = team.share(prepare)
    if team.primary:
        return run_paths(output_dir, name), first_epoch
    scratch = team.make_scratch(f"{Path(output_dir).resolve()}/{name}/{multiworker.fingerprint(config)}")
    paths = run_paths(scratch, name)
    for key, content in files.items():
        target = paths["log"] if key == "log" else paths["best"].parent / key.removeprefix("work/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    paths["best"].parent.mkdir(parents=True, exist_ok=True)
    return paths, first_epoch


def validation_batches(split, plan):
    """(dataset, steps) of the validation split for fit: batches of 500 (steps: None, all of them); for a cluster,
    padded static batches (a multiple of the devices) that Keras shards between the processes, whose loss and
    metrics are still those of the whole split, repeated and counted (the sharded dataset's length is unknown
    to Keras)."""
    if plan.processes == 1:
        return make_dataset(split, 500), None
    batch = plan.replicas * math.ceil(min(500, len(split)) / plan.replicas)
    return padded_dataset(split, batch).repeat(), math.ceil(len(split) / batch)


def build_inputs(config, data_dir):
    """The data set and the run's train/validation splits."""
    dataset = data.load(data_dir)
    train, val = data.train_val_split(dataset.train, config.val_size, config.train_size, config.seed)
    return dataset, train, val


def make_plan(config, name, paths, first_epoch, precision, replicas, train_images, processes=1, primary=True):
    global_batch = config.batch_size * replicas
    steps = train_images // global_batch
    if steps == 0:
        raise UserError(f"global batch {global_batch} is larger than the {train_images} training images")
    return Plan(config=config, name=name, paths=paths, precision=precision, replicas=replicas,
                global_batch_size=global_batch, learning_rate=config.learning_rate * replicas,
                steps_per_epoch=steps, first_epoch=first_epoch, processes=processes, primary=primary)


def train(plan, train_split, val_split, scope, extra_callbacks=()):
    """Build, compile and fit under `scope`; return the model holding the best epoch's weights, and the
    weight average's weights (None without --ema)."""
    config, paths = plan.config, plan.paths
    with scope():
        model = build_compiled(config, plan.steps_per_epoch, plan.learning_rate, train_split.images)
    checkpoint = keras.callbacks.ModelCheckpoint(
        paths["best"], monitor="val_accuracy", mode="max", save_best_only=True, save_weights_only=True)
    if plan.first_epoch and paths["log"].exists():
        # A resumed run must not overwrite the best checkpoint with a worse epoch.
        checkpoint.best = max((row["val_accuracy"] for row in records.read_log(paths["log"])), default=-np.inf)
    callbacks = [EpochTimer(), keras.callbacks.CSVLogger(paths["log"], append=True), checkpoint,
                 keras.callbacks.BackupAndRestore(paths["backup"]),
                 WallTimeEstimate(plan.steps_per_epoch, config.epochs, plan.first_epoch,
                                  note="; timed on smaller images: more" if plan.first_epoch < config.low_res_epochs
                                  else ""), *extra_callbacks]
    if not plan.primary:
        # The other processes of a cluster save the same checkpoints and backups (in their scratch folder: saving
        # is a step all processes take together) and write nothing else.
        callbacks = [c for c in callbacks if isinstance(c, (EpochTimer, keras.callbacks.ModelCheckpoint,
                                                            keras.callbacks.BackupAndRestore))]
    if config.patience:
        finished = records.read_log(paths["log"]) if plan.first_epoch and paths["log"].exists() else []
        callbacks.append(ResumedEarlyStopping(config.patience, [row["val_accuracy"] for row in finished]))
    average = WeightAverage(config.ema)
    if config.ema and plan.primary:
        callbacks.append(average)
    # Epoch e's batches depend only on (seed, e): a resumed run sees what an uninterrupted one does.
    batches = training_data(train_split, config, plan.global_batch_size, first_epoch=plan.first_epoch)
    validation, validation_steps = validation_batches(val_split, plan)
    with scope():  # the batches are already shuffled; fit's own shuffle does not apply to a tf.data.Dataset
        model.fit(batches, validation_data=validation, validation_steps=validation_steps, epochs=config.epochs,
                  steps_per_epoch=plan.steps_per_epoch, callbacks=callbacks, verbose=verbosity() if plan.primary else 0,
                  shuffle=False)
    model.load_weights(paths["best"])
    return model, (average.weights if config.ema and plan.primary else None)


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


def float32_copy(config, weights):
    with hardware.precision_policy("float32"):
        model = models.get_spec(config.model).build(**config.model_args)
    model.set_weights(weights)
    return model


def finalise(plan, model, averaged, dataset, val_split):
    """The float32 model to save (with flip TTA if asked, calibrated) and its scores; the test set is used here,
    once.

    With weight averaging, the averaged weights and the best epoch's compete on validation."""
    config = plan.config
    # The saved model is float32 whatever precision trained it: it runs anywhere, and
    # the test score below is the score of exactly that file.
    final = float32_copy(config, model.get_weights())
    fine_to_coarse = dataset.fine_to_coarse()
    val = {"top1_float32": round(evaluate_model(final, val_split, fine_to_coarse)["top1"], 2)}
    if averaged is not None:
        candidate = float32_copy(config, averaged)
        val["top1_ema"] = round(evaluate_model(candidate, val_split, fine_to_coarse)["top1"], 2)
        val["saved_weights"] = "ema" if val["top1_ema"] > val["top1_float32"] else "best_epoch"
        final = candidate if val["saved_weights"] == "ema" else final
    base = final
    if config.tta:
        # Each TTA's gain is measured on validation, side by side, and recorded.
        final = models.with_tta(base)
        val["top1_flip_tta"] = round(evaluate_model(final, val_split, fine_to_coarse)["top1"], 2)
        if config.tta_translate:
            final = models.with_tta(base, translate=True)
            val["top1_flip_translate_tta"] = round(evaluate_model(final, val_split, fine_to_coarse)["top1"], 2)
    # Recipe studies (ablations) judge on validation only and leave the test set unseen.
    final, calibration, test = calibrated(final, dataset, val_split, config.test_set)
    final.save(plan.paths["model"])
    return base, final, val, test, calibration


def calibrated(final, dataset, val_split, use_test):
    """`final` with a temperature fitted on validation folded in (calibration.py), the calibration record,
    and the test scores of exactly that model (None without the test set), from one pass over the test images.

    Always on, no option: the temperature minimises the validation NLL with T = 1 among the candidates,
    so it cannot raise it, and dividing the logits by T > 0 leaves every predicted class as it was."""
    test_split = dataset.test if use_test else None
    final, calibration, test_logits = calibration.calibrate(final, val_split, test_split)
    test = None
    if use_test:
        probabilities = calibration.probabilities(test_logits, calibration["temperature"])
        test = metrics(probabilities, test_split.fine, test_split.coarse, dataset.fine_to_coarse())
    return final, calibration.rounded(calibration), test


def compute(base, final, train_images_seen, low_res=None):
    """Training and inference compute of the run, in FLOPs (analytic count, see flops.py). `low_res`: (size,
    images seen at that size) of progressive resizing, counted at that size's forward FLOPs."""
    forward = flops.forward_flops(base)
    counts = {"counted": "analytic (convolutions and dense layers, 2 FLOP per multiply-add)",
              "forward_flops_per_image": forward,
              "inference_flops_per_image": flops.forward_flops(final),  # x2 with flip TTA, x6 with translate
              "train_images_seen": train_images_seen,
              "training_flops": flops.training_flops(forward, train_images_seen)}
    if low_res:
        size, seen = low_res
        small = flops.forward_flops(models.with_input_size(base, size))
        counts["low_res"] = {"size": size, "train_images_seen": seen, "forward_flops_per_image": small}
        counts["training_flops"] = flops.training_flops(forward, train_images_seen - seen) + \
            flops.training_flops(small, seen)
    return counts


def make_record(plan, command, hparams, base, final, val_scores, test, calibration, train_split, val_split, started):
    config, paths = plan.config, plan.paths
    log = records.read_log(paths["log"])
    best = max(log, key=lambda row: row["val_accuracy"])
    train_time = sum(row["train_time"] for row in log)
    per_epoch = plan.steps_per_epoch * plan.global_batch_size
    images_seen = per_epoch * len(log)
    low_res = (config.low_res, per_epoch * min(config.low_res_epochs, len(log))) if config.low_res else None
    return {
        "kind": "fit",
        "model": config.model,
        "name": plan.name,
        "command": command,
        "hparams_file": hparams["path"] if hparams else None,
        "hparams": hparams or "built-in",
        "params": int(base.count_params()),  # learned weights (TTA's fixed mirror is not a parameter)
        "epochs": len(log),
        "best_epoch": int(best["epoch"]) + 1,
        "train_images": len(train_split),
        "val_images": len(val_split),
        "precision": plan.precision,
        "train_wall_time_s": round(sum(row["epoch_time"] for row in log), 1),
        "process_wall_time_s": round(time.perf_counter() - started, 1),
        "resumed": plan.first_epoch > 0,
        "processes": plan.processes,
        "replicas": plan.replicas,
        "global_batch_size": plan.global_batch_size,
        "scaled_learning_rate": plan.learning_rate,
        "compute": compute(base, final, images_seen, low_res),
        "throughput": {"train_images_per_s": round(images_seen / train_time, 1)},
        "val": {"top1": round(100 * best["val_accuracy"], 2), "top5": round(100 * best["val_top5"], 2),
                **val_scores},
        "flip_tta": config.tta,
        "translate_tta": config.tta and config.tta_translate,
        "test": test and {k: round(v, 4) if isinstance(v, float) else v for k, v in test.items()},
        "calibration": calibration,
        "config": config.to_dict(),
        "code": records.code_version(),
        **hardware.environment(),
        "files": {k: str(paths[k]) for k in ("model", "log")},
    }


def fit(config, data_dir=None, output_dir="saved_models", name=None, command=None, hparams=None,
        extra_callbacks=(), cluster=None):
    """Train as `config` (a RunConfig) says; write <name>.keras, <name>.json (run record) and <name>.log.csv.

    hparams: provenance of the tuned hyperparameters in `config` ({"path", "sha256"}), None if built-in.
    With --distribute multiworker, this process trains as its place in `cluster` (multiworker.Cluster; default:
    from the environment) says; process 0 writes the files and returns the record, the others return None.
    """
    started = time.perf_counter()
    name = name or config.model
    team = multiworker.join(config, cluster)  # a team of one without --distribute multiworker
    paths, first_epoch = prepare_shared_run_folder(team, output_dir, name, config)
    keras.utils.set_random_seed(config.seed)
    dataset, train_split, val_split = build_inputs(config, data_dir)
    with hardware.precision_policy(config.precision) as precision, \
            hardware.data_parallel(config.distribute) as (scope, replicas):
        plan = make_plan(config, name, paths, first_epoch, precision, replicas, len(train_split), team.processes,
                         team.primary)
        budget = None
        if config.time_budget:
            budget = plan_time_budget(plan, train_split, val_split, scope)
            plan = dataclasses.replace(plan, config=check_low_res(dataclasses.replace(
                config, epochs=budget["planned_epochs"])))
            print(f"fit: {config.time_budget:g} min budget (it sets the epochs, whatever --epochs says): "
                  f"{budget['planned_epochs']} epochs of "
                  f"{budget['measured']['train_s_per_epoch']:.0f} s + {budget['measured']['val_s_per_epoch']:.0f} s "
                  "validation", flush=True)
        print(f"fit: {name} = {config.model} ({'recipe of ' + hparams['path'] if hparams else 'built-in recipe'}), "
              f"{keras.backend.backend()} backend, {precision}, {replicas} replica(s) "
              f"{f'in {team.processes} processes ' if team.processes > 1 else ''}on "
              f"{', '.join(hardware.gpus()) or hardware.cpu_model()}, {len(train_split)} training images, "
              f"{plan.config.epochs} epochs" + (f", resuming after epoch {first_epoch}" if first_epoch else ""),
              flush=True)
        model, averaged = train(plan, train_split, val_split, scope, extra_callbacks)
    if not team.leave():  # the processes other than 0 are done; process 0 finalises alone
        return None
    base, final, val_scores, test, calibration = finalise(plan, model, averaged, dataset, val_split)
    record = make_record(plan, command, hparams, base, final, val_scores, test, calibration, train_split, val_split,
                         started)
    if budget:
        spent = budget["measurement_s"] + record["train_wall_time_s"]
        record["time_budget"] = {**budget, "train_and_val_wall_time_s": record["train_wall_time_s"],
                                 "spent_s": round(spent, 1)}
    records.write(paths["record"], record)
    shutil.rmtree(paths["best"].parent, ignore_errors=True)
    return record
