"""The report's markdown tables, each from committed records; every accuracy column names its views."""

import json
import re
from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras import records
from cifar_keras.errors import UserError
from cifar_keras.reporting import runs

# README's headline rows: (record in saved_models/, what the row is).
HEADLINE = (("mlp", "MLP, built-in recipe"), ("mlp_tuned", "MLP, tuned recipe"), ("cnn", "CNN"),
            ("cnn_budget45", "CNN, `fit cnn --time-budget 45`"))
# Config keys that are not recipe choices (the ablation tables' "Change" column leaves them out).
NOT_RECIPE = {"hparams_file", "test_set", "tta", "tta_translate", "time_budget"}


def markdown(columns, rows):
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                      *("| " + " | ".join(row) + " |" for row in rows)])


def percent(value):
    return "—" if value is None else f"{float(value):.2f} %"


def format_training_flops(flops):
    return f"{flops / 1e15:.2f} PFLOP" if flops >= 1e13 else f"{flops / 1e12:.1f} TFLOP"


def format_inference_flops(flops):
    return f"{flops / 1e9:.2f} GFLOP/image" if flops >= 1e8 else f"{flops / 1e6:.2f} MFLOP/image"


def minutes(seconds):
    return "—" if seconds is None else f"{float(seconds) / 60:.1f} min"


def command_minutes(record):
    """The whole `fit` command's wall time; a resumed run's record holds only its last process's."""
    if record.get("resumed"):
        return "— (resumed)"
    return minutes(record.get("process_wall_time_s"))


def machine(hardware):
    """CPU name, cores and the recorded CPU features, e.g. "AMD EPYC (2 cores) [avx2]"."""
    features = ", ".join(hardware.get("cpu_features", []))
    return f"{hardware['cpu']} ({hardware['cores']} cores)" + (f" [{features}]" if features else "")


def cpu_class(hardware):
    """The CPU and what decides its training speed here, e.g. "AMD EPYC, 2 cores: AVX-512, no AMX"."""
    if hardware.get("gpus"):
        return ", ".join(hardware["gpus"])
    features = set(hardware.get("cpu_features", []))
    if not features:
        kind = "features not recorded"
    elif any(f.startswith("amx") for f in features):
        kind = "AMX"
    elif "avx512f" in features:
        kind = "AVX-512, no AMX"
    else:
        kind = "AVX2 only" if "avx2" in features else "no AVX2"
    if hardware.get("onednn_max_cpu_isa"):
        kind += f", oneDNN limited to {hardware['onednn_max_cpu_isa']}"
    return f"{hardware['cpu'].replace('(R)', '')}, {hardware['cores']} cores: {kind}"


def malformed(path, error, what="run record"):
    return UserError(f"{path}: malformed {what} ({type(error).__name__}: {error})")


def headline_table(records_dir):
    """README's headline: the HEADLINE runs' test top-1 (single view and as shipped), compute, time, CPU."""
    rows = []
    for name, title in HEADLINE:
        path = Path(records_dir) / f"{name}.json"
        if not path.is_file():
            continue
        record = records.read(path)
        try:
            rows.append((f"{title} (`{name}`)", percent(runs.single_view_top1(records_dir, name, record)),
                         f"**{percent(record['test']['top1'])}**", runs.VIEWS[runs.tta_kind(record)],
                         format_training_flops(runs.training_compute(record)["training_flops"]),
                         command_minutes(record), cpu_class(record["hardware"])))
        except (KeyError, TypeError, ValueError) as e:
            raise malformed(path, e) from None
    return markdown(("Model", "Test top-1, single view", "Test top-1, as shipped", "Views as shipped",
                     "Training compute", "Wall time (whole command)", "CPU"), rows)


def full_runs(records_dir, columns):
    """One row per fit run with a test score (records_dir and its side folders), of the named `columns`."""
    rows = []
    for path, record, label in runs.fit_records(records_dir):
        try:
            cells = run_cells(records_dir, path, record, label)
        except (KeyError, TypeError, ValueError) as e:
            raise malformed(path, e) from None
        rows.append(tuple(cells[c] for c in columns))
    return markdown(columns, rows)


def run_cells(records_dir, path, record, label):
    """Every cell a results table may show of one fit run, by column title."""
    test, compute = record["test"], runs.training_compute(record)
    command = runs.reproducing_command(record) if label == record["name"] else runs.writing_to(record, path)
    return {
        "Model": f"`{label}`",
        "Params": f"{record['params'] / 1e6:.2f} M",
        "Test top-1, single view": percent(runs.single_view_top1(records_dir, label, record)),
        "Test top-1, as shipped": f"**{percent(test['top1'])}**",
        "Views as shipped": runs.VIEWS[runs.tta_kind(record)],
        "Test top-5, as shipped": percent(test["top5"]),
        "Superclass, as shipped": percent(test["superclass"]),
        "Epochs": str(int(record["epochs"])),
        "Training compute": format_training_flops(compute["training_flops"]),
        "Inference": format_inference_flops(compute["inference_flops_per_image"]),
        "Training wall time": minutes(record["train_wall_time_s"]),
        "Wall time (whole command)": command_minutes(record),
        "Train images/s": f"{float(record['throughput']['train_images_per_s']):.0f}",
        "Precision": record["precision"],
        "CPU": cpu_class(record["hardware"]),
        "Hardware": ", ".join(record["hardware"]["gpus"]) or machine(record["hardware"]),
        "Recipe": f"`{record['hparams_file']}`" if record.get("hparams_file") else "built-in (`--hparams none`)",
        "Record": f"`{path.as_posix()}`",
        "Command": f"`{command}`",
    }


# README's results table (short), and the one of docs/results.md (every column).
SUMMARY_COLUMNS = ("Model", "Test top-1, single view", "Test top-1, as shipped", "Views as shipped",
                   "Test top-5, as shipped", "Training compute", "Wall time (whole command)", "CPU", "Record")
COLUMNS = ("Model", "Params", "Test top-1, single view", "Test top-1, as shipped", "Views as shipped",
           "Test top-5, as shipped", "Superclass, as shipped", "Epochs", "Training compute", "Inference",
           "Training wall time", "Wall time (whole command)", "Train images/s", "Precision", "Hardware", "Recipe",
           "Command")


def isa_limits(results):
    """What held the bench's kernels to fewer instructions than the CPU has (a stand-in for a smaller CPU), as
    its results' variables say: oneDNN's limit, XLA's (--xla_cpu_max_isa) and PyTorch's own kernels'."""
    limits = {}
    for result in results:
        variables = (result.get("settings") or {}).get("variables", {})
        xla = re.search(r"--xla_cpu_max_isa=(\S+)", variables.get("XLA_FLAGS") or "")
        for text, limit in (("oneDNN limited to {} by ONEDNN_MAX_CPU_ISA", variables.get("ONEDNN_MAX_CPU_ISA")),
                            ("XLA limited to {} by XLA_FLAGS", xla and xla.group(1)),
                            ("PyTorch's kernels limited to {} by ATEN_CPU_CAPABILITY",
                             variables.get("ATEN_CPU_CAPABILITY"))):
            if limit:
                limits.setdefault(text, set()).add(limit)
    return [text.format(", ".join(sorted(values))) for text, values in limits.items()]


def bench_table(path):
    """Throughput per backend and precision from a bench run record, or '' if there is none."""
    path = Path(path)
    if not path.is_file():
        return ""
    record = records.read(path)
    try:
        hardware = record["hardware"]
        features = ", ".join(hardware.get("cpu_features", [])) or "not recorded"
        features += "".join(f"; {limit}" for limit in isa_limits(record["results"]))
        head = (f"Training throughput of `{record['model']}` (batch {record['batch_size']}, {record['steps']} timed "
                f"steps after {record['warmup']} warm-up step{'' if record['warmup'] == 1 else 's'}) on "
                f"{hardware['cpu']} ({hardware['cores']} cores; CPU features: {features}), measured side by side "
                f"by `{record['command']}` ({path.as_posix()}):")
        rows = [(r["backend"], r["precision"], f"failed: {r['error']}", "") if "error" in r else
                (r["backend"], r["precision"], f"{r['train_images_per_s']:.0f}", f"{r['pipeline_images_per_s']:.0f}")
                for r in record["results"]]
        columns = ("Backend", "Precision", "Train images/s", "Input pipeline images/s")
        variants = [r.get("variant", "recipe") for r in record["results"]]
        if set(variants) != {"recipe"}:  # bench --variant: the recipe with options changed, side by side
            changed = [", ".join(f"{k} {json.dumps(v)}" for k, v in r.get("overrides", {}).items()) or "—"
                       for r in record["results"]]
            rows = [(v, c, *row) for v, c, row in zip(variants, changed, rows)]
            columns = ("Variant", "Recipe options changed", *columns)
    except (KeyError, TypeError, ValueError) as e:
        raise malformed(path, e, "bench record") from None
    return f"{head}\n\n" + markdown(columns, rows)


def last_train_top1(log):
    rows = records.read_log(log)
    if not rows:
        raise UserError(f"{log}: epoch log has no rows")
    return f"{100 * rows[-1]['accuracy']:.2f} %"


ABLATION_COLUMNS = ("Run", "Change", "Val top-1, single view", "Δ val", "Train top-1", "Epochs",
                    "Training wall time", "Train images/s", "Precision",
                    "Val top-1, flip (2 views) / flip + translate (6 views)", "Training compute", "Machine", "Command")


def ablation_table(folder, reference, title):
    """Validation scores of recipe variants in `folder`, each against the `reference` run's config, or ''."""
    folder = Path(folder)
    logs = runs.epoch_logs(folder)
    found = runs.fit_records_in(folder)
    base = next((r for r in found.values() if r.get("name") == reference), None)
    if base is None:
        return ""
    rows = []
    for path, record in sorted(found.items(), key=lambda item: item[1].get("name") != reference):
        try:
            ran, reference_ran = run_config.upgrade(record["config"]), run_config.upgrade(base["config"])
            changed = [f"{k}={ran[k]:.4g}" if isinstance(ran[k], float) else f"{k}={ran[k]}" for k in sorted(ran)
                       if k not in NOT_RECIPE and not run_config.same_value(ran[k], reference_ran[k])]
            val = record["val"]
            tta = " / ".join(percent(val[key]) for key in ("top1_flip_tta", "top1_flip_translate_tta")
                             if val.get(key) is not None) or "—"
            rows.append((f"`{record['name']}`", ", ".join(changed) or "(reference)", percent(val["top1"]),
                         f"{float(val['top1']) - float(base['val']['top1']):+.2f}",
                         last_train_top1(logs[path.stem]) if path.stem in logs else "—",
                         str(int(record["epochs"])), minutes(record["train_wall_time_s"]),
                         f"{float(record['throughput']['train_images_per_s']):.0f}", record["precision"], tta,
                         format_training_flops(runs.training_compute(record)["training_flops"]),
                         machine(record["hardware"]), f"`{runs.writing_to(record, path)}`"))
        except (KeyError, TypeError, ValueError) as e:
            raise malformed(path, e, "run record or log") from None
    head = (f"{title}. Runs in `{folder.as_posix()}/`: {base['train_images']} training images, scored on "
            f"{base['val_images']} validation images (the test set is not used). Each row changes what its second "
            f"column says from `{reference}`. Train top-1 is the last epoch's, on its training batches (augmented "
            f"where the run augments): its gap to val top-1 shows how much a run overfits.")
    return f"{head}\n\n" + markdown(ABLATION_COLUMNS, rows)


def corruption_table(records_dir):
    """Top-1 of each model clean and per corruption (mean over its severities), and the mean corruption top-1
    (over every corruption x severity), from the corruption records; '' if there are none."""
    found = runs.corruption_records(records_dir)
    if not found:
        return ""
    columns = []  # per record: {row name: cell}
    for label, record, path in found:
        try:
            summary = record["summary"]
            columns.append({"views": corruption_views(record),
                            "clean": percent(record["clean"]["top1"]),
                            **{n: percent(v) for n, v in summary["by_corruption"].items()},
                            "mean": f"**{percent(summary['mean_corruption_top1'])}**",
                            "images": f"{int(record['images'])} x {len(record['severities'])}"})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise malformed(path, e, "corruption record") from None
    names = list(dict.fromkeys(n for _, record, _ in found for n in record["summary"]["by_corruption"]))
    rows = [("views", "views"), ("clean", "clean"), *((n, n.replace("_", " ")) for n in names),
            ("mean", "**mean corruption top-1**"), ("images", "images x severities")]
    head = ("Corruption robustness (`python -m cifar_keras evaluate MODEL --corruptions`): the 15 corruptions of "
            "CIFAR-100-C (Hendrycks & Dietterich, 2019) re-implemented in `cifar_keras/evaluation/corruptions.py` "
            "(frost with synthetic frost textures). Each corruption's top-1 is the mean over its severities; the "
            "mean corruption top-1 is the mean over every corruption x severity; \"views\" is the test-time "
            "augmentation each model was scored with. Records in "
            f"`{(Path(records_dir) / runs.CORRUPTIONS).as_posix()}/`:")
    return f"{head}\n\n" + markdown(("Top-1", *(f"`{label}`" for label, _, _ in found)),
                                    [(title, *(c.get(key, "—") for c in columns)) for key, title in rows])


def corruption_views(record):
    """The views a corruption record's model was scored with; older records did not say (the model's own)."""
    return runs.VIEWS.get(record.get("tta"), "as saved (not recorded)")


def tuning_tables(tuning_dir):
    """Per searched model: the search's command and budget, and its trials best first."""
    sections = []
    for search in sorted(Path(tuning_dir).rglob("search.json")):
        record = records.read(search)
        trials_path = search.parent / "trials.json"
        try:
            trials = [t for t in records.read(trials_path) if t["val_accuracy"] is not None]
            trials.sort(key=lambda t: (-t["val_accuracy"], str(t["trial_id"])))
            names = sorted({k for t in trials for k in t["hyperparameters"] if not k.startswith("tuner/")})
            budget = record.get("budget") or {}
            cost = (f", each trial given its share of a {budget['budget_minutes']:.0f}-minute full run"
                    + (" (the built-in recipe's time)" if budget.get("of") == "recipe" else "") if budget else "")
            seconds = record.get("search_wall_time_s")
            took = "wall time not recorded (resumed search)" if seconds is None else f"{float(seconds) / 60:.0f} min"
            head = (f"`{record['model']}` (`{search.parent.as_posix()}/`): {record['tuner']} search, "
                    f"{record['trials']} trials on {record['train_images']} training images, scored on "
                    f"{record['val_images']} validation images{cost}, {took} on {record['hardware']['cpu']} "
                    f"({record['hardware']['cores']} cores): `{record['command']}`")
            rows = []
            for t in trials:
                hp = t["hyperparameters"]
                values = [f"{hp[n]:.3g}" if isinstance(hp.get(n), float) else str(hp.get(n, "")) for n in names]
                epochs = int(t.get("epochs") or hp.get("tuner/epochs", record["epochs"]))
                rows.append((str(t["trial_id"]), f"{100 * t['val_accuracy']:.2f} %", str(epochs), *values))
        except (KeyError, TypeError, ValueError) as e:
            raise malformed(trials_path, e, "trials summary") from None
        sections.append(f"{head}\n\n" + markdown(("Trial", "Val top-1, single view", "Epochs", *names), rows))
    return "\n\n".join(sections)
