"""`tune`: KerasTuner search over a model's space; the best trial becomes tuning/<model>/best_hparams.json.

The objective is accuracy on the validation split carved from the training set; the test
set is never touched. The tuner's working folder (tuning/<model>/search/, git-ignored)
lets an interrupted search continue where it stopped.
"""

import json
import sys
import time
from pathlib import Path

import keras
import keras_tuner

from cifar_keras import data, models, records
from cifar_keras.pipeline import make_dataset
from cifar_keras.train import compile_model, make_config, precision_policy

TUNERS = ("random", "hyperband", "bayesian")


class CifarHyperModel(keras_tuner.HyperModel):
    """Builds and fits a registered model exactly as `fit` does, with hyperparameters from `hp`."""

    def __init__(self, model_name, train_split, **overrides):
        super().__init__(name=model_name)
        self.model_name, self.train_split, self.overrides = model_name, train_split, overrides
        self.space = models.get_spec(model_name).space

    def config(self, hp):
        config = make_config(self.model_name, hparams=self.space(hp), **self.overrides)
        # Hyperband decides each trial's epoch budget; the schedule spans that budget.
        config["epochs"] = hp.values.get("tuner/epochs", config["epochs"])
        # A small search subset must still give at least one full batch.
        config["batch_size"] = min(config["batch_size"], len(self.train_split))
        return config

    def build(self, hp):
        config = self.config(hp)
        model = models.get_spec(config["model"]).build(**config["model_args"])
        compile_model(model, config, len(self.train_split) // config["batch_size"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        config = self.config(hp)
        train_ds = make_dataset(self.train_split, config["batch_size"], training=True, seed=config["seed"],
                                crop_pad=config["crop_pad"], flip=config["flip"], cutout_size=config["cutout_size"])
        return model.fit(train_ds, *args, verbose=2 if not sys.stdout.isatty() else 1, **kwargs)


def make_tuner(kind, hypermodel, directory, max_trials, max_epochs, seed):
    common = dict(objective=keras_tuner.Objective("val_accuracy", "max"), directory=str(directory),
                  project_name="search", overwrite=False, seed=seed)
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    tuner = keras_tuner.Hyperband(hypermodel, max_epochs=max_epochs, factor=3, **common)
    # Hyperband sizes its brackets from max_epochs; max_trials caps the CPU cost on top.
    tuner.oracle.max_trials = max_trials
    return tuner


def trial_summary(tuner):
    trials = []
    for trial in tuner.oracle.trials.values():
        values = {k: v for k, v in trial.hyperparameters.values.items()}
        trials.append({"trial_id": trial.trial_id, "status": trial.status,
                       "val_accuracy": trial.score, "hyperparameters": values})
    return sorted(trials, key=lambda t: int(t["trial_id"]))


def tune(model_name, kind="hyperband", max_trials=10, epochs=3, max_epochs=9, train_size=None, val_size=5000,
         seed=0, precision="auto", data_dir=None, tuning_dir="tuning", command=None):
    """Run (or continue) a search; write trials.json, best_hparams.json and a run record."""
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    dataset = data.load(data_dir)
    train, val = data.train_val_split(dataset.train, val_size, train_size, seed)
    hypermodel = CifarHyperModel(model_name, train, epochs=epochs, train_size=train_size, val_size=val_size,
                                 seed=seed, precision=precision)
    folder = Path(tuning_dir) / model_name
    tuner = make_tuner(kind, hypermodel, folder, max_trials, max_epochs, seed)
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    earlier = records.read(folder / "search.json") if (folder / "search.json").is_file() else None
    # Wall time accumulates over resumed runs; unknown if earlier runs left no record.
    earlier_time = earlier.get("search_wall_time_s") if earlier else (0.0 if not tuner.oracle.trials else None)
    with precision_policy(precision) as policy:
        if len(completed) < max_trials:  # a finished search only rewrites its summaries
            tuner.search(validation_data=make_dataset(val, 500), epochs=epochs)

    best_hp = tuner.get_best_hyperparameters(1)[0]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    overrides = hypermodel.space(best_hp)
    best = {"model": model_name, "val_accuracy": best_trial.score, "trial_id": best_trial.trial_id,
            "hparams": overrides}
    trials = trial_summary(tuner)
    (folder / "best_hparams.json").write_text(json.dumps(best, indent=2) + "\n")
    (folder / "trials.json").write_text(json.dumps(trials, indent=2) + "\n")
    records.write(folder / "search.json", {
        "kind": "tune", "model": model_name, "tuner": kind, "command": command,
        "max_trials": max_trials, "epochs": epochs, "max_epochs": max_epochs, "train_images": len(train),
        "val_images": len(val), "seed": seed, "precision": policy, "trials": len(trials),
        "run_wall_time_s": round(time.perf_counter() - started, 1),
        "search_wall_time_s": None if earlier_time is None else round(earlier_time + time.perf_counter() - started, 1),
        "best": best, **records.environment(),
    })
    return best, trials
