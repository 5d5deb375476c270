"""`fit`: train a registered model on the training split, select on validation, test once, record."""

import contextlib
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from cifar_keras import data, models, records
from cifar_keras.errors import UserError
from cifar_keras.evaluate import evaluate_model
from cifar_keras.pipeline import make_dataset

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def resolve_precision(choice="auto"):
    """auto: float16 on GPUs, bfloat16 on CPUs with AMX, else float32.

    AVX512-BF16 alone is not enough: on such a CPU without AMX, TensorFlow's bfloat16
    matmuls and convolutions run at about half the float32 rate and the CNN trains no
    faster (saved_models/bench_no_amx.json), while AMX makes it about 4x faster (bench.json).
    """
    if choice != "auto":
        return POLICIES[choice]
    if records.gpus():
        return "mixed_float16"
    if "amx_bf16" in records.cpu_flags():
        return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def precision_policy(choice):
    """Use Keras' dtype policy for `choice` inside the block, then restore the previous one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolve_precision(choice))
    try:
        yield keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def make_config(model_name, hparams=None, **overrides):
    """The model's default recipe, then tuned `hparams`, then every override that is not None."""
    config = {"model": model_name, "model_args": {}, **models.get_spec(model_name).defaults,
              "seed": 0, "val_size": 5000, "train_size": None, "precision": "auto", "patience": 0,
              "distribute": "none", "test_set": True}
    for key, value in (hparams or {}).items():
        config[key] = {**config["model_args"], **value} if key == "model_args" else value
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def read_hparams(path, model_name):
    """The `hparams` of a best_hparams.json written by `tune`, checked against the model's recipe."""
    import inspect

    content = records.read(path)
    hparams = content.get("hparams") if isinstance(content, dict) else None
    if not isinstance(hparams, dict):
        raise UserError(f"{path}: no 'hparams' object")
    if content.get("model", model_name) != model_name:
        raise UserError(f"{path}: hyperparameters are for '{content['model']}', not '{model_name}'")
    spec = models.get_spec(model_name)
    unknown = set(hparams) - set(spec.defaults) - {"model_args"}
    builder_args = set(inspect.signature(spec.build).parameters)
    unknown |= {f"model_args.{k}" for k in hparams.get("model_args", {}) if k not in builder_args}
    if unknown:
        raise UserError(f"{path}: unknown hyperparameters for {model_name}: {', '.join(sorted(unknown))}")
    for key, value in hparams.items():
        default = spec.defaults.get(key)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise UserError(f"{path}: '{key}' must be a non-negative number, got {value!r}")
    return hparams


def data_parallel(kind):
    """(scope factory, replicas) for synchronous data-parallel training over this machine's devices.

    TensorFlow: tf.distribute.MirroredStrategy over the GPUs (else the logical CPUs);
    JAX: keras.distribution.DataParallel over all devices.
    """
    if kind == "none":
        return contextlib.nullcontext, 1
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        return strategy.scope, strategy.num_replicas_in_sync
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext, len(devices)
    raise UserError(f"--distribute {kind} needs KERAS_BACKEND=tensorflow or jax, not {backend}")


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


def make_optimizer(config, steps_per_epoch):
    """SGD-Nesterov or AdamW under linear warm-up then cosine decay to zero."""
    warmup = int(config["warmup_epochs"] * steps_per_epoch)
    total = config["epochs"] * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total - warmup, 1), warmup_target=config["learning_rate"], warmup_steps=warmup)
    if config["optimizer"] == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=config["weight_decay"])
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"])
    # Decaying BatchNorm scales and biases only fights the normalisation.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def compile_model(model, config, steps_per_epoch):
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config["label_smoothing"]),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(5, name="top5")],
    )


def pipeline_throughput(dataset, batches=40):
    """Images/s of the input pipeline alone (no model), over the first `batches` batches."""
    start, count = time.perf_counter(), 0
    for images, _ in dataset.take(batches):
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def train_throughput(model, dataset, batch_size, steps=5, warmup=2):
    """Images/s of fit() steps of a compiled model, timed after `warmup` untimed steps (compilation)."""
    dataset = dataset.repeat()  # a small split may hold fewer batches than warm-up plus timed steps
    model.fit(dataset.take(warmup), epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(dataset.skip(warmup).take(steps), epochs=1, verbose=0, shuffle=False)
    return batch_size * steps / (time.perf_counter() - start)


def run_paths(output_dir, name):
    output_dir = Path(output_dir)
    work = output_dir / ".work" / name
    return {"model": output_dir / f"{name}.keras", "record": output_dir / f"{name}.json",
            "log": output_dir / f"{name}.log.csv", "best": work / "best.weights.h5", "backup": work / "backup"}


def train_model(spec, config, scaled, scope, steps_per_epoch, train_ds, val_ds, paths, resuming, extra_callbacks):
    """Build, compile and fit under `scope`; return the model holding the best epoch's weights."""
    with scope():
        model = spec.build(**config["model_args"])
        compile_model(model, scaled, steps_per_epoch)
    checkpoint = keras.callbacks.ModelCheckpoint(
        paths["best"], monitor="val_accuracy", mode="max", save_best_only=True, save_weights_only=True)
    if resuming and paths["log"].exists():
        # A resumed run must not overwrite the best checkpoint with a worse epoch.
        checkpoint.best = max((row["val_accuracy"] for row in records.read_log(paths["log"])), default=-np.inf)
    callbacks = [EpochTimer(), keras.callbacks.CSVLogger(paths["log"], append=True), checkpoint,
                 keras.callbacks.BackupAndRestore(paths["backup"]), *extra_callbacks]
    if config["patience"]:
        callbacks.append(keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=config["patience"]))
    with scope():  # the pipeline shuffles; fit's own shuffle does not apply to a tf.data.Dataset
        model.fit(train_ds, validation_data=val_ds, epochs=config["epochs"], callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2, shuffle=False)
    if config["distribute"] != "none" and keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)

    model.load_weights(paths["best"])
    return model


def fit(config, data_dir=None, output_dir="saved_models", name=None, command=None, extra_callbacks=()):
    """Train as `config` says; write <name>.keras, <name>.json (run record) and <name>.log.csv."""
    started = time.perf_counter()
    name = name or config["model"]
    paths = run_paths(output_dir, name)
    resuming = paths["backup"].exists()
    if not resuming:
        paths["log"].unlink(missing_ok=True)
        paths["best"].unlink(missing_ok=True)
    paths["best"].parent.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(config["seed"])
    dataset = data.load(data_dir)
    train, val = data.train_val_split(dataset.train, config["val_size"], config["train_size"], config["seed"])
    scope, replicas = data_parallel(config["distribute"])
    # Each replica keeps the per-device batch; the learning rate follows the global batch (linear scaling).
    scaled = {**config, "batch_size": config["batch_size"] * replicas,
              "learning_rate": config["learning_rate"] * replicas}
    augment = {k: config[k] for k in ("crop_pad", "flip", "cutout_size")}
    train_ds = make_dataset(train, scaled["batch_size"], training=True, seed=config["seed"], **augment)
    val_ds = make_dataset(val, 500)
    steps_per_epoch = len(train) // scaled["batch_size"]
    if steps_per_epoch == 0:
        raise UserError(f"global batch {scaled['batch_size']} is larger than the {len(train)} training images")
    pipeline_ips = pipeline_throughput(train_ds)

    spec = models.get_spec(config["model"])
    with precision_policy(config["precision"]) as policy:
        model = train_model(spec, config, scaled, scope, steps_per_epoch, train_ds, val_ds, paths, resuming,
                            extra_callbacks)

    # The saved model is float32 whatever precision trained it: it runs anywhere, and
    # the test score below is the score of exactly that file.
    final = spec.build(**config["model_args"])
    final.set_weights(model.get_weights())
    fine_to_coarse = dataset.fine_to_coarse()
    val_plain = evaluate_model(final, val, fine_to_coarse)
    if config.get("tta"):
        # Flip TTA's gain is measured on validation, side by side, and recorded.
        final = models.with_flip_tta(final)
        val_tta = evaluate_model(final, val, fine_to_coarse)
    # Recipe studies (ablations) judge on validation only and leave the test set unseen.
    test = evaluate_model(final, dataset.test, fine_to_coarse) if config["test_set"] else None
    final.save(paths["model"])
    shutil.rmtree(paths["best"].parent, ignore_errors=True)

    log = records.read_log(paths["log"])
    best = max(log, key=lambda row: row["val_accuracy"])
    train_time = sum(row["train_time"] for row in log)
    record = {
        "kind": "fit",
        "model": config["model"],
        "name": name,
        "command": command,
        "hparams_file": config.get("hparams_file"),
        "params": int(final.count_params()),
        "epochs": len(log),
        "best_epoch": int(best["epoch"]) + 1,
        "train_images": len(train),
        "val_images": len(val),
        "precision": policy,
        "train_wall_time_s": round(sum(row["epoch_time"] for row in log), 1),
        "process_wall_time_s": round(time.perf_counter() - started, 1),
        "resumed": resuming,
        "replicas": replicas,
        "global_batch_size": scaled["batch_size"],
        "scaled_learning_rate": scaled["learning_rate"],
        "throughput": {
            "train_images_per_s": round(steps_per_epoch * scaled["batch_size"] * len(log) / train_time, 1),
            "pipeline_images_per_s": round(pipeline_ips, 1),
        },
        "val": {"top1": round(100 * best["val_accuracy"], 2), "top5": round(100 * best["val_top5"], 2),
                "top1_float32": round(val_plain["top1"], 2),
                **({"top1_flip_tta": round(val_tta["top1"], 2)} if config.get("tta") else {})},
        "flip_tta": bool(config.get("tta")),
        "test": test and {k: round(v, 4) if isinstance(v, float) else v for k, v in test.items()},
        "config": config,
        **records.environment(),
        "files": {k: str(paths[k]) for k in ("model", "log")},
    }
    records.write(paths["record"], record)
    return record
