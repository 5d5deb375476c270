"""`tune`: KerasTuner search over a model's space; the best trial becomes tuning/<model>/best_hparams.json.

The objective is accuracy on the validation split carved from the training set; the test
set is never touched. The tuner's working folder (tuning/<model>/search/, git-ignored)
lets an interrupted search continue where it stopped.

With a time budget (`budget`), every trial is a scaled-down copy of a full run that would
take that long: its throughput is measured first, and it trains for as many epochs as the
full training set would allow in the budget. Slow, wide nets then get fewer epochs than
fast, narrow ones, so the search ranks recipes by accuracy at equal CPU cost. The budget is
minutes, or "recipe": the time the built-in recipe takes on this machine, which keeps the
found epochs meaningful on other machines too.
"""

import dataclasses
import time
from pathlib import Path

import keras
import keras_tuner

from cifar_keras import records
from cifar_keras import data
from cifar_keras import models
from cifar_keras import hardware
from cifar_keras.search import parallel
from cifar_keras.config import make_config
from cifar_keras.errors import UserError
from cifar_keras.data.pipeline import make_dataset
from cifar_keras.training.budget import epochs_in_budget
from cifar_keras.training.callbacks import verbosity
from cifar_keras.training.inputs import training_data
from cifar_keras.training.optimizers import build_compiled, compile_model
from cifar_keras.training.throughput import train_throughput

TUNERS = ("random", "hyperband", "bayesian")


class CifarHyperModel(keras_tuner.HyperModel):
    """Builds and fits a registered model exactly as `fit` does, with hyperparameters from `hp`."""

    def __init__(self, model_name, train_split, **overrides):
        super().__init__(name=model_name)
        self.model_name, self.train_split, self.overrides = model_name, train_split, overrides
        self.budget_s = None  # seconds per trial, when the search is cost-aware (see `tune`)
        self.space = models.get_spec(model_name).space

    def config(self, hp):
        config = make_config(self.model_name, hparams=self.space(hp), **self.overrides)
        # Hyperband decides each trial's epoch budget; the schedule spans that budget. A small
        # search subset must still give at least one full batch.
        return dataclasses.replace(config, epochs=hp.values.get("tuner/epochs", config.epochs),
                                   batch_size=min(config.batch_size, len(self.train_split)))

    def steps(self, config):
        return len(self.train_split) // config.batch_size

    def build(self, hp):
        config = self.config(hp)
        return build_compiled(config, self.steps(config), train_images=self.train_split.images)

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, **kwargs):
        config = self.config(hp)
        kwargs = {"shuffle": False, "verbose": verbosity(), **kwargs}  # the batches are already shuffled
        if self.budget_s:
            images_per_s = self.throughput(hp)
            # As many epochs as fit in the budget, to the nearest one (fit --time-budget: never more).
            epochs = epochs_in_budget(self.budget_s, len(self.train_split) / images_per_s, within=False)
            config = dataclasses.replace(config, epochs=epochs)
            compile_model(model, config, self.steps(config))
            kwargs["validation_freq"] = epochs  # validating once, after the last epoch, keeps the cost on training
        epochs = epochs or config.epochs
        if initial_epoch:
            # A continued Hyperband trial resumes its schedule where the epochs it inherits left it,
            # instead of warming up again.
            model.optimizer.build(model.trainable_variables)
            model.optimizer.iterations.assign(initial_epoch * self.steps(config))
        batches = training_data(self.train_split, config, config.batch_size, first_epoch=initial_epoch, epochs=epochs)
        history = model.fit(batches, *args, epochs=epochs, initial_epoch=initial_epoch,
                            steps_per_epoch=self.steps(config), **kwargs)
        if not self.budget_s:
            return history
        return {"val_accuracy": history.history["val_accuracy"][-1], "epochs": float(epochs),
                "train_images_per_s": images_per_s}

    def throughput(self, hp):
        """Training images/s of `hp`'s recipe, timed on a throw-away model (the trial's starts fresh)."""
        config = self.config(hp)
        batches = training_data(self.train_split, config, config.batch_size, epochs=1)
        return train_throughput(self.build(hp), batches, config.batch_size, steps=8)


class RecipeFirstOracle(keras_tuner.oracles.RandomSearchOracle):
    """Random search whose first trial is the space's defaults, i.e. the model's built-in recipe,
    so the search reports how the recipe `fit` uses compares with what it found."""

    def populate_space(self, trial_id):
        if not self.trials:
            return {"status": "RUNNING", "values": {hp.name: hp.default for hp in self.hyperparameters.space}}
        return super().populate_space(trial_id)


def make_tuner(kind, hypermodel, directory, max_trials, max_epochs, seed):
    common = dict(objective=keras_tuner.Objective("val_accuracy", "max"), directory=str(directory),
                  project_name="search", overwrite=False, seed=seed)
    if kind == "random":
        objective, seed = common.pop("objective"), common.pop("seed")
        oracle = RecipeFirstOracle(objective=objective, max_trials=max_trials, seed=seed)
        return keras_tuner.Tuner(oracle, hypermodel, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    tuner = keras_tuner.Hyperband(hypermodel, max_epochs=max_epochs, factor=3, **common)
    # Hyperband sizes its brackets from max_epochs; max_trials caps the CPU cost on top.
    tuner.oracle.max_trials = max_trials
    return tuner


def full_run_budget(hypermodel, budget, full_train_images):
    """The budget of a full training run in minutes; for "recipe", timed on the built-in recipe."""
    if budget != "recipe":
        return {"budget_minutes": float(budget)}
    defaults = keras_tuner.HyperParameters()
    hypermodel.space(defaults)  # registers every hyperparameter at its default: the built-in recipe
    recipe_epochs = make_config(hypermodel.model_name).epochs
    images_per_s = hypermodel.throughput(defaults)
    return {"budget_minutes": round(recipe_epochs * full_train_images / images_per_s / 60, 2), "of": "recipe",
            "recipe_epochs": recipe_epochs, "recipe_images_per_s": round(images_per_s, 1)}


def trial_summary(tuner):
    trials = []
    for trial in tuner.oracle.trials.values():
        values = {k: v for k, v in trial.hyperparameters.values.items()}
        # Budgeted trials also report the epochs their budget allowed and their measured speed.
        measured = {name: trial.metrics.get_last_value(name) for name in ("epochs", "train_images_per_s")
                    if trial.metrics.exists(name)}
        trials.append({"trial_id": trial.trial_id, "status": trial.status,
                       "val_accuracy": trial.score, "hyperparameters": values, **measured})
    return sorted(trials, key=lambda t: int(t["trial_id"]))


def tune(model_name, kind="hyperband", max_trials=10, epochs=3, max_epochs=9, budget=None, data_dir=None,
         tuning_dir="tuning", command=None, role=None, **options):
    """Run (or continue) a search; write trials.json, best_hparams.json and a run record.

    budget: None (every trial trains `epochs`), minutes of a full training run, or "recipe".
    role: this process's parallel.Role in a distributed search (None: the search in this process). The
      chief serves the search and writes the summaries; a worker runs trials and returns (None, its trial ids).
    options: RunConfig fields every trial shares (train_size, val_size, seed, precision, ...).
    """
    if budget is not None and kind == "hyperband":
        raise UserError("--budget sets each trial's epochs itself: use --tuner random or bayesian")
    if budget == "recipe" and role is not None:
        raise UserError("--budget recipe times the recipe on each machine: a distributed search takes the budget in "
                        "minutes (time the recipe with a search on one machine)")
    started = time.perf_counter()
    shared = make_config(model_name, epochs=epochs, **options)
    seed, precision = shared.seed, shared.precision
    keras.utils.set_random_seed(seed)
    dataset = data.load(data_dir)
    train, val = data.train_val_split(dataset.train, shared.val_size, shared.train_size, seed)
    hypermodel = CifarHyperModel(model_name, train, epochs=epochs, **options)
    folder = Path(tuning_dir) / model_name
    with parallel.environment(role):  # KerasTuner reads a distributed role when the tuner is made
        tuner = make_tuner(kind, hypermodel, folder, max_trials, max_epochs, seed)
        if role is not None and not role.chief:  # a worker: trials from the chief; it writes no summary
            with hardware.precision_policy(precision):
                if budget is not None:  # minutes (not "recipe", see above): this subset's share, as below
                    hypermodel.budget_s = 60 * float(budget) * len(train) / (len(dataset.train) - len(val))
                return None, parallel.work(tuner, role, validation_data=make_dataset(val, 500), epochs=epochs)
    if not tuner.oracle.trials and (folder / "search" / "oracle.json").is_file():
        tuner.oracle.reload()  # a search that another tuner id (a distributed search's chief, ...) ran here
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    earlier = records.read(folder / "search.json") if (folder / "search.json").is_file() else None
    # Wall time accumulates over resumed runs; unknown if earlier runs left no record.
    earlier_time = earlier.get("search_wall_time_s") if earlier else (0.0 if not tuner.oracle.trials else None)
    cost, given = {}, None
    with hardware.precision_policy(precision) as policy:
        if budget is not None:
            cost = full_run_budget(hypermodel, budget, len(dataset.train) - len(val))
            # A trial on a subset gets the subset's share of the budget: as many epochs as the full run.
            hypermodel.budget_s = 60 * cost["budget_minutes"] * len(train) / (len(dataset.train) - len(val))
        if role is not None and (len(completed) < max_trials or role.workers):
            given = parallel.serve(tuner, role)  # the workers train; with --workers, all are told it is over
        elif len(completed) < max_trials:  # a finished search only rewrites its summaries
            with parallel.environment(role):
                tuner.search(validation_data=make_dataset(val, 500), epochs=epochs)

    best_hp = tuner.get_best_hyperparameters(1)[0]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    overrides = hypermodel.space(best_hp)
    trials = trial_summary(tuner)
    if budget is not None:  # the full run trains as many epochs as the winner's trial did
        overrides["epochs"] = int(next(t for t in trials if t["trial_id"] == best_trial.trial_id)["epochs"])
    best = {"model": model_name, "val_accuracy": best_trial.score, "trial_id": best_trial.trial_id,
            **({"budget": cost} if cost else {}), "hparams": overrides}
    records.write(folder / "best_hparams.json", best)
    records.write(folder / "trials.json", trials)
    records.write(folder / "search.json", {
        "kind": "tune", "model": model_name, "tuner": kind, "command": command,
        "max_trials": max_trials, "epochs": epochs, "max_epochs": max_epochs, "budget": cost or None,
        "train_images": len(train),
        "val_images": len(val), "seed": seed, "precision": policy, "trials": len(trials),
        "run_wall_time_s": round(time.perf_counter() - started, 1),
        "search_wall_time_s": None if earlier_time is None else round(earlier_time + time.perf_counter() - started, 1),
        "best": best, **hardware.environment(), "code": records.code_version(),
        # This run's chief: its address and the trials it gave each worker (a trial retried after a failure may
        # be listed under two workers).
        "distributed": None if role is None else {"oracle": role.oracle, "workers": role.workers,
                                                  "trials_given": given or {}},
    })
    return best, trials
