"""The run record of a fit: what was trained, how, how fast, at what cost, and how well it scores."""

import time

from cifar_keras import hardware, models, records
from cifar_keras.evaluation.calibration import rounded
from cifar_keras.models import flops


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


def make_record(plan, command, hparams, finalised, train_split, val_split, started, code, budget=None):
    """The record of a finished run (finalised: finalise.Finalised); `started`: time.perf_counter() when the
    command started; `code`: records.code_version(); `budget`: the time budget's plan (budget.py), if any."""
    config, paths = plan.config, plan.paths
    log = records.read_log(paths["log"])
    best = max(log, key=lambda row: row["val_accuracy"])
    train_time = sum(row["train_time"] for row in log)
    per_epoch = plan.steps_per_epoch * plan.global_batch_size
    images_seen = per_epoch * len(log)
    low_res = (config.low_res, per_epoch * min(config.low_res_epochs, len(log))) if config.low_res else None
    base = finalised.base
    record = {
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
        "compute": compute(base, finalised.model, images_seen, low_res),
        "throughput": {"train_images_per_s": round(images_seen / train_time, 1)},
        "val": {"top1": round(100 * best["val_accuracy"], 2), "top5": round(100 * best["val_top5"], 2),
                **finalised.val},
        "flip_tta": config.tta,
        "translate_tta": config.tta and config.tta_translate,
        "views": finalised.views,
        "test": rounded(finalised.test),  # the saved model, as shipped (with its TTA)
        "test_single_view": rounded(finalised.test_single_view),  # its network alone, on the raw test images
        "calibration": finalised.calibration,
        "config": config.to_dict(),
        "code": code,
        **hardware.environment(),
        "files": {k: str(paths[k]) for k in ("model", "log")},
    }
    if budget:
        # The whole command's wall time, against the budget's plan for it (writing the record takes milliseconds).
        record["time_budget"] = {**budget, "train_and_val_wall_time_s": record["train_wall_time_s"],
                                 "wall_time_s": round(time.perf_counter() - started, 1)}
    return record

