"""The run folder: where a run's files go, and what an interrupted run left there to resume from.

OUTPUT_DIR/NAME.keras, NAME.json (run record) and NAME.log.csv are a run's outputs; OUTPUT_DIR/.work/NAME/ is
its work folder while it runs: its config, Keras' BackupAndRestore backup and best-epoch checkpoint during
training, then (trained.json, average.npz) the trained state that finalising starts from. A rerun of the same
command resumes from there: after the last finished epoch, or, when training was done, at finalising.

A finished run is never replaced by accident: a new run of the same name goes to OUTPUT_DIR/runs/NAME-N/
(N = 1, 2, ...) unless `overwrite` says to replace it.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from cifar_keras.config import upgrade
from cifar_keras.errors import UserError


def run_paths(output_dir, name):
    output_dir = Path(output_dir)
    work = output_dir / ".work" / name
    return {"model": output_dir / f"{name}.keras", "record": output_dir / f"{name}.json",
            "log": output_dir / f"{name}.log.csv", "work": work, "config": work / "config.json",
            "best": work / "best.weights.h5", "backup": work / "backup", "trained": work / "trained.json",
            "average": work / "average.npz"}


# --- which folder: a finished run stays as it is ------------------------------------------------

def interrupted(paths):
    """Whether the run folder holds a run that started and did not finish (its work folder is removed at the end)."""
    return paths["config"].exists()


def same_config(paths, config):
    """Whether the interrupted run of `paths` trains `config` (options added since it started ran at their
    defaults there: config.upgrade)."""
    return upgrade(json.loads(paths["config"].read_text())) == json.loads(json.dumps(config.to_dict()))


def choose_output_dir(output_dir, name, config, overwrite=False):
    """The folder of this run: `output_dir`, unless it holds a finished run of `name` (and not `overwrite`); then
    the runs/NAME-N/ folder that holds an interrupted run of `config` (to resume it), else the first new one."""
    paths = run_paths(output_dir, name)
    if overwrite or interrupted(paths) or not paths["model"].exists():
        return Path(output_dir)
    n = 1
    while (Path(output_dir) / "runs" / f"{name}-{n}").exists():
        candidate = run_paths(Path(output_dir) / "runs" / f"{name}-{n}", name)
        if interrupted(candidate) and same_config(candidate, config):
            return candidate["model"].parent
        n += 1
    return Path(output_dir) / "runs" / f"{name}-{n}"


# --- the trained state: what finalising needs ------------------------------------------------------

def save_trained(paths, epochs, averaged=None):
    """Mark training as done (best epoch's weights in paths["best"]): `epochs` trained, and the weight average's
    weights (None without --ema). Written last, so that its presence means all of it is there."""
    if averaged is not None:
        np.savez(paths["average"], *averaged)
    paths["trained"].write_text(json.dumps({"epochs": epochs, "average": averaged is not None}))


def trained(paths):
    """The epochs of a run whose training is done (save_trained), else None."""
    try:
        return int(json.loads(paths["trained"].read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_average(paths):
    """The weight average's weights that save_trained kept (None if none)."""
    if not json.loads(paths["trained"].read_text())["average"]:
        return None
    with np.load(paths["average"]) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


# --- preparing the folder -------------------------------------------------------------------------

def finished_epochs(paths):
    """Epochs already trained by an interrupted run: all of them once training is done, else those of
    BackupAndRestore's own metadata (0: a new run)."""
    done = trained(paths)
    if done is not None:
        return done
    try:
        return int(json.loads((paths["backup"] / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def prepare_run_folder(output_dir, name, config, overwrite=False):
    """Paths of the run's files, and the epochs an interrupted run already trained.

    A new run starts without stale logs or checkpoints; a resumed run keeps the log rows of
    the epochs its backup holds and drops any row written after (the backup is the truth).
    Only the same config resumes: another one would continue the old weights under a new recipe.
    """
    folder = choose_output_dir(output_dir, name, config, overwrite)
    if folder != Path(output_dir):
        resumed = interrupted(run_paths(folder, name))
        print(f"fit: {Path(output_dir) / name}.keras is a finished run: this run "
              f"{'resumes in' if resumed else 'goes to'} {folder}/ (--overwrite replaces the finished run)", flush=True)
    paths = run_paths(folder, name)
    done = finished_epochs(paths)
    if done and paths["config"].exists() and not same_config(paths, config):
        raise UserError(f"{paths['work']}: an interrupted run of '{name}' with another config is there; rerun it "
                        "with its own options to resume it, or delete that folder (or use another --name)")
    if done == 0:
        shutil.rmtree(paths["work"], ignore_errors=True)
        paths["log"].unlink(missing_ok=True)
    elif paths["log"].exists():
        lines = paths["log"].read_text().splitlines(keepends=True)
        paths["log"].write_text("".join(lines[:1 + done]))
    paths["work"].mkdir(parents=True, exist_ok=True)
    paths["config"].write_text(json.dumps(config.to_dict()))
    return paths, done


def prepare_shared_run_folder(team, output_dir, name, config, overwrite=False):
    """prepare_run_folder for every process of a cluster (`team`: distributed.team.Team): process 0 prepares its run
    folder (resuming as a single process does) and sends the others its working files (checkpoints, backup,
    trained state, log), which they keep in their private scratch folder: every process resumes from the same
    state, and only process 0 writes in the output folder."""
    def prepare():
        paths, first_epoch = prepare_run_folder(output_dir, name, config, overwrite)
        files = {f"work/{p.relative_to(paths['work'])}": p.read_bytes()
                 for p in sorted(paths["work"].rglob("*")) if p.is_file()}
        if paths["log"].exists():
            files["log"] = paths["log"].read_bytes()
        return [str(paths["model"].parent), first_epoch], files

    (folder, first_epoch), files = team.share(prepare)
    if team.primary:
        return run_paths(folder, name), first_epoch
    scratch = team.make_scratch(f"{Path(folder).resolve()}/{name}")
    paths = run_paths(scratch, name)
    for key, content in files.items():
        target = paths["log"] if key == "log" else paths["work"] / key.removeprefix("work/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    paths["work"].mkdir(parents=True, exist_ok=True)
    return paths, first_epoch
