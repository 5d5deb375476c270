"""The time budget (--time-budget M): the epochs and test-time views with which the whole command ends within M
minutes, and for the CNN the variant of its recipe, chosen from the study table (budget_study.py).

The command's time is its start-up (loading the data, these measurements, building the model and tracing its
first steps), the epochs (training steps, a validation pass and checkpoints each), and finalising (the float32
rebuild, each test-time view's pass over the validation and test images, calibration, saving). The speed of
each part is measured here on throw-away models, once per run: a resumed run keeps the plan it started with.
"""

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from cifar_keras import recipes
from cifar_keras.data.pipeline import make_dataset
from cifar_keras.evaluation import calibration
from cifar_keras.training import budget_study
from cifar_keras.training.finalise import float32_model, tta_views
from cifar_keras.training.inputs import training_data
from cifar_keras.training.optimizers import build_compiled
from cifar_keras.training.throughput import StepTimer, inference_time, train_throughput

SAMPLE_IMAGES = 1000  # validation images that the validation and inference passes are timed on
# Whole epochs ran 3-8 % slower than the first steps the plan times (budget/cnn_budget45_amx: +2.9 %;
# budget/cnn_budget45_avx2_isa: +2.6 to +8 % an epoch), so the plan fills the budget divided by this.
MARGIN = 1.05


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


def measure_finalise_time(config, val_split):
    """The speed of finalise (finalise.py) on this machine, timed on a throw-away float32 model: building each
    float32 model and tracing its prediction, seconds per image of one view's pass, and saving."""
    start = time.perf_counter()
    model = float32_model(config)
    logits = calibration.logit_model(model)
    build_s = time.perf_counter() - start
    s_per_image, trace_s = inference_time(logits, val_split.images[:SAMPLE_IMAGES])
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        model.save(Path(scratch) / "probe.keras")
        save_s = time.perf_counter() - start
    return {"build_and_trace_s": build_s + trace_s, "s_per_image": s_per_image, "save_s": save_s}


def finalise_seconds(speed, config, views, val_images, test_images):
    """Seconds of finalise with `views` test-time views: one pass over the validation images per view (and one
    more for the weight average's candidate), the same over `test_images` test images, building, saving."""
    networks = 2 if config.ema else 1
    images = views * (val_images + test_images) + (networks - 1) * val_images
    return networks * speed["build_and_trace_s"] + images * speed["s_per_image"] + speed["save_s"]


def config_views(config):
    """The test-time views `config` asks for: 1, 2 (flip) or 6 (flip + translate)."""
    return len(tta_views(config))


def with_views(config, views):
    """`config` with `views` test-time views (1, 2 or 6); `config` itself where it asks for those."""
    if views == config_views(config):
        return config
    return dataclasses.replace(config, tta=views > 1, tta_translate=views > 2)


def variants_allowed(config, study):
    """The study's variants `config` may train: for the CNN, each whose changed options the run leaves at the
    recipe's values (an option set to something else on the command line stays as set); any other model: none."""
    if config.model != "cnn":
        return []
    return [name for name, options in budget_study.VARIANTS.items()
            if name in study and all(getattr(config, key) == recipes.CNN[key] for key in options)]


def choose_plan(config, budget_s, startup_s, epoch_s, finalise_s, study=budget_study.STUDY):
    """(the chosen candidate, all candidates), each candidate {"variant", "views", "epochs", "expected_val_top1"}
    for `budget_s` seconds of the whole command: for each view count up to what `config` asks for, the whole epochs
    that fit once start-up and that view count's finalising (`finalise_s`: views -> seconds) are paid; for the CNN
    recipe, with each variant of the study the run allows, the candidate the study expects to score highest on
    validation (ties: fewer views, cheaper to serve; then the recipe itself); any other model keeps its own views
    and options. Expected scores are non-decreasing in the epochs, so a larger budget never chooses a lower
    expectation."""
    views_asked = config_views(config)
    variants = variants_allowed(config, study)
    allowed = [v for v in budget_study.VIEWS if v <= views_asked] if variants else [views_asked]
    candidates = []
    for views in allowed:
        epochs = epochs_in_budget(budget_s - startup_s - finalise_s(views), epoch_s)
        for variant in variants or [None]:
            expected = budget_study.expected_top1(epochs, views, study[variant]) if variant else None
            if variant and expected is None:
                continue  # fewer epochs than the variant's study measured
            candidates.append({"variant": variant, "views": views, "epochs": epochs,
                               "expected_val_top1": None if expected is None else round(expected, 2)})
    order = list(budget_study.VARIANTS)
    best = max(candidates, key=lambda c: (c["expected_val_top1"] or 0.0, -c["views"],
                                          -order.index(c["variant"]) if c["variant"] else 0))
    return best, candidates


def planned_config(config, budget):
    """`config` as the budget's plan trains it: its epochs, views and the chosen variant's options."""
    variant = budget.get("planned_variant")
    options = budget_study.VARIANTS[variant] if variant else {}
    planned = dataclasses.replace(config, epochs=budget["planned_epochs"], **options)
    return with_views(planned, budget.get("planned_views", config_views(config)))


def plan_time_budget(plan, train_split, val_split, test_images, scope, started):
    """The plan of a run under `config.time_budget` minutes ({"minutes", "measured", "planned", "planned_epochs",
    "planned_views", "choice", "measurement_s"}), for a command that started at time.perf_counter() `started`:
    measured once per run, a resumed run reuses the first plan, so its schedule is the one it started with."""
    saved = plan.paths["work"] / "time_budget.json"
    if plan.first_epoch and saved.exists():
        return json.loads(saved.read_text())
    config = plan.config
    measuring = time.perf_counter()
    speed = measure_epoch_time(config, train_split, val_split, plan.global_batch_size, plan.learning_rate, scope)
    finalise_speed = measure_finalise_time(config, val_split)
    now = time.perf_counter()
    # Start-up: what the command spent so far (these measurements included), and the run's own first-step tracing.
    startup_s = now - started + speed["start_s"]
    epoch_s = speed["train_s_per_epoch"] + speed["val_s_per_epoch"]

    def finalise_s(views):
        return finalise_seconds(finalise_speed, config, views, len(val_split), test_images)

    budget_s = 60 * config.time_budget / MARGIN
    chosen, candidates = choose_plan(config, budget_s, startup_s, epoch_s, finalise_s)
    epochs, views, variant = chosen["epochs"], chosen["views"], chosen["variant"]
    variants = variants_allowed(config, budget_study.STUDY)
    finalise_planned_s = finalise_s(views)
    if startup_s + epochs * epoch_s + finalise_planned_s > budget_s:
        print(f"fit: warning: one epoch takes longer than the {config.time_budget:g} min budget leaves for "
              "training", flush=True)
    budget = {"minutes": config.time_budget,
              "measured": {**{k: round(v, 3) for k, v in speed.items()}, "finalise_s": round(finalise_planned_s, 3),
                           "finalise_s_per_view_count": {v: round(finalise_s(v), 1) for v in budget_study.VIEWS}},
              "measurement_s": round(now - measuring, 1), "planned_epochs": epochs, "planned_views": views,
              "planned_variant": variant,
              "choice": {"candidates": candidates,
                         "variants": {name: budget_study.VARIANTS[name] for name in variants},
                         "why": ("the candidate (a variant of the recipe, and the epochs that fit with each view "
                                 "count's finalising) the study table cifar_keras/training/budget_study.py expects to "
                                 "score highest on validation") if variant
                         else "the most epochs that fit with the views the run asks for"},
              "planned": {"startup_s": round(startup_s, 1), "variant": variant, "epochs": epochs, "views": views,
                          "s_per_epoch": round(epoch_s, 2), "finalise_s": round(finalise_planned_s, 1),
                          "wall_s": round(startup_s + epochs * epoch_s + finalise_planned_s, 1)}}
    saved.write_text(json.dumps(budget))
    return budget


def describe(budget):
    """The start line of a run under a time budget: its recipe variant, its planned split of the whole command's
    time, and its views."""
    planned, measured = budget["planned"], budget["measured"]
    views, variant = planned.get("views", 1), planned.get("variant")
    options = budget_study.VARIANTS.get(variant) or {}
    recipe = (f"the recipe with {', '.join(f'{k} {v}' for k, v in options.items())}: " if options
              else "the recipe: " if variant else "")
    return (f"fit: {budget['minutes']:g} min budget for the whole command (it sets the epochs and test-time views, "
            f"whatever --epochs and --tta say): {recipe}start-up {planned['startup_s']:.0f} s + "
            f"{planned['epochs']} epochs x {planned['s_per_epoch']:.1f} s ({measured['train_s_per_epoch']:.1f} s training + "
            f"{measured['val_s_per_epoch']:.1f} s validation) + finalising {planned['finalise_s']:.0f} s "
            f"({views} view{'s' if views > 1 else ''}) = {planned['wall_s']:.0f} s planned")
