"""The run records a report reads: which fit runs there are, what each measured, how to rerun it."""

import functools
import json
import re
import shlex
from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras import records
from cifar_keras.errors import UserError

PREVIOUS = "previous"  # records of models a newer recipe replaced: shown as previous/NAME
# Full runs that are not today's models, each in a subfolder shown as FOLDER/NAME: replaced recipes, and
# robust-training candidates that were not adopted.
SIDE_FOLDERS = (PREVIOUS, "robust", "budget")  # budget: `fit --time-budget` runs, one per CPU class
SINGLE_VIEW = "single_view"  # `evaluate --tta none` records of the models with TTA, named like their rows
CORRUPTIONS = "corruptions"  # `evaluate --corruptions` records of the models in records_dir

# Recipe comparisons on validation: (folder in saved_models/, its reference run, the table's title).
ABLATION_TABLES = (
    ("ablations", "reference", "Small-scale recipe ablations of `cnn` (4,000 training images, 8 epochs: too small "
                               "to guide the full recipe; kept for the record)"),
    ("study", "ref_e7", "Recipe study of `cnn` on the full training set (45,000 images; each candidate against the "
                        "reference at equal training compute)"),
    ("study/muon_lr", "sgd_lr0.2", "Learning-rate screening of Muon (`--optimizer muon`) against the recipe's SGD "
                                   "(10,000 training images, 3 epochs: only to pick Muon's learning rate for the "
                                   "full-scale run)"),
    ("study/robust_screen", "base", "Robust-training screening on top of Muon (10,000 training images, 3 epochs: "
                                    "only to pick the candidate for a full-scale run; corruption scores in "
                                    "[robustness.md](robustness.md))"),
    ("study/budget", "cnn_e4", "Short budgets, round 4: the `cnn` recipe trained for 1, 2 and 4 epochs (what "
                               "`--time-budget` trains on slower CPUs; the table it chooses from: "
                               "[recipe-study.md](recipe-study.md#round-4-short-budgets-views-and-jpeg)), and JPEG "
                               "re-encoding at 4 epochs (bfloat16, AMD EPYC without AMX)"),
)

# The views a model averages its prediction over, by `evaluate --tta` kind.
VIEWS = {"none": "single view", "flip": "flip (2 views)", "flip_translate": "flip + translate (6 views)"}


def fit_records_in(folder):
    """{path: record} of the fit run records directly in `folder` (other records, e.g. evaluate's, may sit beside)."""
    return {path: record for path in sorted(Path(folder).glob("*.json"))
            if isinstance(record := records.read(path), dict) and record.get("kind") == "fit"}


def fit_records(folder):
    """(path, record, label) of every fit run record with a test score in `folder` and its SIDE_FOLDERS,
    labelled by where it is committed (a run adopted as the default may have trained under another name),
    the MLP runs first, then by label."""
    found = []
    for sub, prefix in ((Path(folder), ""), *((Path(folder) / side, f"{side}/") for side in SIDE_FOLDERS)):
        for path, record in fit_records_in(sub).items():
            if record.get("test", {}) is None:
                continue  # fit records without a test score are recipe studies (see tables.ablation_table)
            found.append((record.get("model") != "mlp", prefix + path.stem, path, record))
    return [(path, record, label) for _, label, path, record in sorted(found, key=lambda f: f[:2])]


def epoch_logs(folder):
    """Run name -> its epoch log, for every `NAME.log.csv` in `folder`."""
    return {path.name[: -len(".log.csv")]: path for path in sorted(Path(folder).glob("*.log.csv"))}


def tta_kind(record):
    """"none", "flip" or "flip_translate": the test-time augmentation a fit run's saved model embeds."""
    if not record.get("flip_tta"):
        return "none"
    return "flip_translate" if record.get("translate_tta") else "flip"


def single_view_top1(records_dir, label, record):
    """Test top-1 of the run's net on the plain image: the record's own score for a model without TTA, else
    that of its `evaluate --tta none` record (single_view/LABEL.json, "/" as "_"); None if there is none."""
    if tta_kind(record) == "none":
        return float(record["test"]["top1"])
    if record.get("test_single_view"):  # fit records since 2026-12-05 hold it themselves
        return float(record["test_single_view"]["top1"])
    path = Path(records_dir) / SINGLE_VIEW / f"{label.replace('/', '_')}.json"
    if not path.is_file():
        return None
    evaluated = records.read(path)
    if not isinstance(evaluated, dict) or evaluated.get("tta") != "none" or evaluated.get("split") != "test":
        raise UserError(f"{path}: not an `evaluate --tta none` record of the test split")
    try:
        return float(evaluated["test"]["top1"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: malformed evaluate record ({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=None)
def _float32_model(name, model_args_json):
    """The model `name` built (float32) with its JSON-encoded `model_args`; cached per model and args."""
    from cifar_keras import hardware, models

    with hardware.precision_policy("float32"):
        return models.get_spec(name).build(**json.loads(model_args_json))


def training_compute(record):
    """The record's "compute" block; for older records, the same keys counted from its model and config."""
    if "compute" in record:
        return record["compute"]
    from cifar_keras import models
    from cifar_keras.models import flops

    config = record["config"]
    model = _float32_model(record["model"], json.dumps(config["model_args"], sort_keys=True))
    forward = flops.forward_flops(model)
    # What fit trains: full global batches only, every epoch.
    global_batch = record.get("global_batch_size") or config["batch_size"]
    images_seen = (int(record["train_images"]) // global_batch) * global_batch * int(record["epochs"])
    return {"counted": "analytic (convolutions and dense layers, 2 FLOP per multiply-add)",
            "forward_flops_per_image": forward,
            "inference_flops_per_image": flops.forward_flops(
                models.with_tta(model, translate=bool(record.get("translate_tta")))) if record.get("flip_tta")
            else forward,
            "train_images_seen": images_seen,
            "training_flops": flops.training_flops(forward, images_seen)}


def reproducing_command(record):
    """The record's command, made explicit where a default has changed since it ran: a built-in-recipe
    run says `--hparams none` (or today's `fit` would pick up a tuned file), and gets a flag for every
    recipe option whose value today's recipe no longer has. Options a record lacks predate the schema
    and ran at what is still their default."""
    command = record["command"]
    if record.get("kind") != "fit" or record.get("hparams_file") or record.get("model") not in run_config.RECIPES:
        return command
    if "--hparams" not in command:
        command += " --hparams none"
    if "config" not in record:
        return command
    from cifar_keras import models

    ran, today = run_config.upgrade(record.get("config", {})), run_config.make_config(record["model"]).to_dict()
    for name, value in ran.items():
        if name == "model" or run_config.same_value(value, today[name]):
            continue
        if name == "model_args":  # compared as built: a record may leave builder arguments at their defaults
            if "--model-args" not in command and (models.full_model_args(record["model"], value)
                                                  != models.full_model_args(record["model"], today[name])):
                command += " --model-args " + shlex.quote(json.dumps(value))
            continue
        flag = run_config.flag_of(name)
        if isinstance(value, bool):
            flag = flag if value else flag.replace("--", "--no-", 1)
            command += "" if flag in command.split() else f" {flag}"
        elif flag not in command.split():
            command += f" {flag} {value}"
    return command


def writing_to(record, path):
    """The record's reproducing command with its output options set to write it at `path` (where it is
    committed now), so that rerunning it neither overwrites another model nor writes outside the repository."""
    command = re.sub(r" --(output-dir|name) \S+", "", reproducing_command(record))
    name = f" --name {path.stem}" if path.stem != record["model"] else ""  # fit's default name is the model's
    return f"{command} --output-dir {path.parent.as_posix()}{name}"


def compute_points(records_dir):
    """Top-1 against training compute of every fit run in `records_dir`, its SIDE_FOLDERS and ABLATION_TABLES."""
    points = []
    for folder in (Path(records_dir), *(Path(records_dir) / side for side in SIDE_FOLDERS),
                   *(Path(records_dir) / folder for folder, *_ in ABLATION_TABLES)):
        for path, record in fit_records_in(folder).items():
            try:
                test = record.get("test")
                label = f"{folder.name}/{path.stem}" if folder.name in SIDE_FOLDERS else path.stem
                points.append({"name": label, "pflop": training_compute(record)["training_flops"] / 1e15,
                               "top1": float((test or record["val"])["top1"]), "test": bool(test),
                               "flip_tta": record.get("val", {}).get("top1_flip_tta")})
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"{path}: malformed run record ({type(e).__name__}: {e})") from None
    return points


def corruption_records(records_dir):
    """(label, record, path) of every `evaluate --corruptions` record in records_dir/corruptions/, by file name."""
    found = []
    for path in sorted((Path(records_dir) / CORRUPTIONS).glob("*.json")):
        record = records.read(path)
        if isinstance(record, dict) and record.get("kind") == "corruptions":
            found.append((path.stem, record, path))
    return found
