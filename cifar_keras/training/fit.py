"""`fit`: train a registered model on the training split, select on validation, test once, record.

The stages read top to bottom in `fit`: prepare the run folder (run_folder.py) -> build the inputs (inputs.py) ->
plan (and fit the time budget: budget.py) -> train (optimizers.py, callbacks.py) -> finalise (finalise.py:
float32 rebuild, TTA, calibration, evaluation, save) -> record (record.py).
"""

import dataclasses
import shutil
import time

import keras
import numpy as np

from cifar_keras import data, hardware, records
from cifar_keras.config import check_low_res
from cifar_keras.errors import UserError
from cifar_keras.training import budget as time_budget
from cifar_keras.training import run_folder
from cifar_keras.training.callbacks import (EpochTimer, ResumedEarlyStopping, WallTimeEstimate, WeightAverage,
                                            verbosity)
from cifar_keras.training.finalise import finalise
from cifar_keras.training.inputs import build_inputs, phases, training_data, validation_batches
from cifar_keras.training.optimizers import build_compiled, build_model
from cifar_keras.training.precision import choose as choose_precision
from cifar_keras.training.record import make_record


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
    weight average's weights (None without --ema). Once done, the trained state is kept in the work folder
    (run_folder.save_trained): a run interrupted while finalising trains nothing again when rerun."""
    config, paths = plan.config, plan.paths
    if run_folder.trained(paths) is not None:
        with scope():
            model = build_model(config)
        model.load_weights(paths["best"])
        return model, run_folder.load_average(paths) if plan.primary else None
    with scope():
        model = build_compiled(config, plan.steps_per_epoch, plan.learning_rate, train_split.images)
    checkpoint = keras.callbacks.ModelCheckpoint(
        paths["best"], monitor="val_accuracy", mode="max", save_best_only=True, save_weights_only=True)
    if plan.first_epoch and paths["log"].exists():
        # A resumed run must not overwrite the best checkpoint with a worse epoch.
        checkpoint.best = max((row["val_accuracy"] for row in records.read_log(paths["log"])), default=-np.inf)
    timing = [EpochTimer(), keras.callbacks.CSVLogger(paths["log"], append=True), checkpoint]
    estimate = WallTimeEstimate(plan.steps_per_epoch, config.epochs, plan.first_epoch,
                                note="; timed on smaller images: more" if plan.first_epoch < config.low_res_epochs
                                else "")
    average = WeightAverage(config.ema)
    validation, validation_steps = validation_batches(val_split, plan)
    epochs_run = 0
    for first, last in phases(config, plan.first_epoch):  # one image size each (progressive resizing: two)
        # The backup is kept from one phase to the next: a run stopped before the next phase's first epoch ends
        # resumes from it.
        backup = keras.callbacks.BackupAndRestore(paths["backup"], delete_checkpoint=last == config.epochs)
        callbacks = [*timing, backup, estimate, *extra_callbacks]
        if not plan.primary:
            # The other processes of a cluster save the same checkpoints and backups (in their scratch folder:
            # saving is a step all processes take together) and write nothing else.
            callbacks = [c for c in callbacks if isinstance(c, (EpochTimer, keras.callbacks.ModelCheckpoint,
                                                                keras.callbacks.BackupAndRestore))]
        if config.patience:
            finished = records.read_log(paths["log"]) if first and paths["log"].exists() else []
            callbacks.append(ResumedEarlyStopping(config.patience, [row["val_accuracy"] for row in finished]))
        if config.ema and plan.primary:
            callbacks.append(average)
        # Epoch e's batches depend only on (seed, e): a resumed run sees what an uninterrupted one does.
        batches = training_data(train_split, config, plan.global_batch_size, first_epoch=first, epochs=last)
        if epochs_run:
            model.make_train_function(force=True)  # traced again, for this phase's image size
        with scope():  # the batches are already shuffled; fit's own shuffle does not apply to a tf.data.Dataset
            history = model.fit(batches, validation_data=validation, validation_steps=validation_steps,
                                initial_epoch=first, epochs=last, steps_per_epoch=plan.steps_per_epoch,
                                callbacks=callbacks, verbose=verbosity() if plan.primary else 0, shuffle=False)
        epochs_run += len(history.epoch)
        if model.stop_training:  # stopped early
            break
    model.load_weights(paths["best"])
    averaged = average.weights if config.ema and plan.primary else None
    # Keras' BackupAndRestore deleted its backup as fit returned: from here on, this is what a rerun resumes from.
    run_folder.save_trained(paths, plan.first_epoch + epochs_run, averaged)
    return model, averaged


def announce(plan, hparams, train_split):
    """The start line: what trains, how, where, on what."""
    config, first_epoch = plan.config, plan.first_epoch
    resuming = ""
    if run_folder.trained(plan.paths) is not None:
        resuming = f", trained already ({first_epoch} epochs): finalising"
    elif first_epoch:
        resuming = f", resuming after epoch {first_epoch}"
    print(f"fit: {plan.name} = {config.model} ({'recipe of ' + hparams['path'] if hparams else 'built-in recipe'}), "
          f"{keras.backend.backend()} backend, {plan.precision}, {plan.replicas} replica(s) "
          f"{f'in {plan.processes} processes ' if plan.processes > 1 else ''}on "
          f"{', '.join(hardware.gpus()) or hardware.cpu_model()}, {len(train_split)} training images, "
          f"{config.epochs} epochs" + resuming, flush=True)


def fit(config, data_dir=None, output_dir="saved_models", name=None, command=None, hparams=None,
        extra_callbacks=(), team=None, overwrite=False, record_extra=None):
    """Train as `config` (a RunConfig) says; write <name>.keras, <name>.json (run record) and <name>.log.csv in
    `output_dir`, or, when a finished run of that name is there, in output_dir/runs/<name>-N/ (unless
    `overwrite`).

    hparams: provenance of the tuned hyperparameters in `config` ({"path", "sha256"}), None if built-in.
    record_extra: more fields for the run record (e.g. the probe that chose the backend); None values are left out.
    team: with --distribute multiworker, this process's distributed.team.Team (multiworker.join); it trains as its
    place in the cluster says, process 0 writes the files and returns the record, the others return None.
    """
    started = time.perf_counter()
    name = name or config.model
    if config.distribute == "multiworker" and team is None:
        raise UserError("--distribute multiworker: fit needs this process's place in the cluster (multiworker.join)")
    code = records.code_version()
    if code["git_dirty"] and (team is None or team.primary):
        print("fit: warning: the git tree has uncommitted changes: the record's git_commit is not exactly the code "
              "that ran", flush=True)
    if team is None:
        paths, first_epoch = run_folder.prepare_run_folder(output_dir, name, config, overwrite)
    else:
        paths, first_epoch = run_folder.prepare_shared_run_folder(team, output_dir, name, config, overwrite)
    keras.utils.set_random_seed(config.seed)
    dataset, train_split, val_split = build_inputs(config, data_dir)
    chosen, precision_probe = choose_precision(config, paths, train_split, config.batch_size, config.learning_rate,
                                               first_epoch)
    if precision_probe:
        keras.utils.set_random_seed(config.seed)  # the probe's throw-away models drew from the seeded generators
    with hardware.precision_policy(chosen) as precision, \
            hardware.data_parallel(config.distribute) as (scope, replicas):
        plan = make_plan(config, name, paths, first_epoch, precision, replicas, len(train_split),
                         *((team.processes, team.primary) if team else ()))
        budget = None
        if config.time_budget:
            test_images = len(dataset.test) if config.test_set else 0
            budget = time_budget.plan_time_budget(plan, train_split, val_split, test_images, scope, started)
            plan = dataclasses.replace(plan, config=check_low_res(time_budget.planned_config(config, budget)))
            print(time_budget.describe(budget), flush=True)
        announce(plan, hparams, train_split)
        model, averaged = train(plan, train_split, val_split, scope, extra_callbacks)
    if team is not None and not team.leave():  # the processes other than 0 are done; process 0 finalises alone
        return None
    finalised = finalise(plan, model, averaged, dataset, val_split)
    record = make_record(plan, command, hparams, finalised, train_split, val_split, started, code, budget)
    record["val_split"] = data.describe_split(dataset.train.fine, config.val_size)  # what evaluate --split val re-carves
    if precision_probe:
        record["precision_probe"] = precision_probe
    record.update({key: value for key, value in (record_extra or {}).items() if value is not None})
    records.write(paths["record"], record)
    shutil.rmtree(paths["work"], ignore_errors=True)
    return record
