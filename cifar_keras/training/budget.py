"""The time budget (--time-budget M): the epochs after which the whole command ends within M minutes.

The command's time is its start-up (loading the data, these measurements, building the model and tracing its
first steps), the epochs (training steps, a validation pass and checkpoints each), and finalising (the float32
rebuild, each test-time view's pass over the validation and test images, calibration, saving). The speed of
each part is measured here on throw-away models, once per run: a resumed run keeps the plan it started with.
"""

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from cifar_keras.data.pipeline import make_dataset
from cifar_keras.evaluation import calibration
from cifar_keras.training.finalise import float32_model, tta_views
from cifar_keras.training.inputs import training_data
from cifar_keras.training.optimizers import build_compiled
from cifar_keras.training.throughput import StepTimer, inference_time, train_throughput

SAMPLE_IMAGES = 1000  # validation images that the validation and inference passes are timed on


def epochs_in_budget(budget_s, seconds_per_epoch, within=True):
    """Whole epochs that fit in `budget_s` (within: never more; else the nearest number), at least one."""
    epochs = budget_s / seconds_per_epoch
    return max(1, math.floor(epochs + 1e-9) if within else round(epochs))


def measure_epoch_time(config, train_split, val_split, batch_size, learning_rate, scope):
    """Seconds of one epoch's training steps and of the rest of an epoch (a validation pass, checkpoints), and of
    what a run pays once before its first timed step (building, compiling, tracing), timed on a throw-away model."""
    start, timer = time.perf_counter(), StepTimer(2)
    with scope():
        probe = build_compiled(config, len(train_split) // batch_size, learning_rate)
        images_per_s = train_throughput(probe, training_data(train_split, config, batch_size, epochs=1), batch_size,
                                        steps=8, warmup=2, timer=timer)
        start_s = timer.start - start
        sample = val_split.take(np.arange(min(len(val_split), SAMPLE_IMAGES)))
        first = time.perf_counter()
        probe.evaluate(make_dataset(sample, 500), verbose=0)  # compiles the test step
        second = time.perf_counter()
        probe.evaluate(make_dataset(sample, 500), verbose=0)
        end = time.perf_counter()
    start_s += max((second - first) - (end - second), 0.0)
    val_s = (end - second) * len(val_split) / len(sample)
    with tempfile.TemporaryDirectory() as scratch:  # each epoch also writes a backup and maybe a best checkpoint
        begin = time.perf_counter()
        probe.save_weights(Path(scratch) / "probe.weights.h5")
        val_s += 2 * (time.perf_counter() - begin)
    steps = len(train_split) // batch_size
    return {"train_images_per_s": images_per_s, "train_s_per_epoch": steps * batch_size / images_per_s,
            "val_s_per_epoch": val_s, "start_s": start_s}


def measure_finalise_time(config, val_split, test_images):
    """Seconds of finalise (finalise.py) on this machine: building each float32 model and tracing its prediction,
    one pass over the validation images per test-time view (and one more for the weight average's candidate), the
    same over `test_images` test images, and saving; timed on a throw-away float32 model."""
    start = time.perf_counter()
    model = float32_model(config)
    logits = calibration.logit_model(model)
    build_s = time.perf_counter() - start
    s_per_image, trace_s = inference_time(logits, val_split.images[:SAMPLE_IMAGES])
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        model.save(Path(scratch) / "probe.keras")
        save_s = time.perf_counter() - start
    networks = 2 if config.ema else 1
    views = len(tta_views(config))
    images = views * (len(val_split) + test_images) + (networks - 1) * len(val_split)
    return networks * (build_s + trace_s) + images * s_per_image + save_s


def plan_time_budget(plan, train_split, val_split, test_images, scope, started):
    """The plan of a run under `config.time_budget` minutes ({"minutes", "measured", "planned", "planned_epochs",
    "measurement_s"}), for a command that started at time.perf_counter() `started`: measured once per run, a
    resumed run reuses the first plan, so its schedule is the one it started with."""
    saved = plan.paths["work"] / "time_budget.json"
    if plan.first_epoch and saved.exists():
        return json.loads(saved.read_text())
    measuring = time.perf_counter()
    speed = measure_epoch_time(plan.config, train_split, val_split, plan.global_batch_size, plan.learning_rate, scope)
    finalise_s = measure_finalise_time(plan.config, val_split, test_images)
    now = time.perf_counter()
    # Start-up: what the command spent so far (these measurements included), and the run's own first-step tracing.
    startup_s = now - started + speed["start_s"]
    epoch_s = speed["train_s_per_epoch"] + speed["val_s_per_epoch"]
    left_s = 60 * plan.config.time_budget - startup_s - finalise_s
    epochs = epochs_in_budget(left_s, epoch_s)
    if epochs * epoch_s > left_s:
        print(f"fit: warning: one epoch takes longer than the {plan.config.time_budget:g} min budget leaves for "
              "training", flush=True)
    budget = {"minutes": plan.config.time_budget,
              "measured": {**{k: round(v, 3) for k, v in speed.items()}, "finalise_s": round(finalise_s, 3)},
              "measurement_s": round(now - measuring, 1), "planned_epochs": epochs,
              "planned": {"startup_s": round(startup_s, 1), "epochs": epochs, "s_per_epoch": round(epoch_s, 2),
                          "finalise_s": round(finalise_s, 1),
                          "wall_s": round(startup_s + epochs * epoch_s + finalise_s, 1)}}
    saved.write_text(json.dumps(budget))
    return budget


def describe(budget):
    """The start line of a run under a time budget: its planned split of the whole command's time."""
    planned, measured = budget["planned"], budget["measured"]
    return (f"fit: {budget['minutes']:g} min budget for the whole command (it sets the epochs, whatever --epochs "
            f"says): start-up {planned['startup_s']:.0f} s + {planned['epochs']} epochs x {planned['s_per_epoch']:.1f} s "
            f"({measured['train_s_per_epoch']:.1f} s training + {measured['val_s_per_epoch']:.1f} s validation) + "
            f"finalising {planned['finalise_s']:.0f} s = {planned['wall_s']:.0f} s planned")
