"""The report's figures and the test-set analysis of one model, with the markdown that shows them.

Rankings are made on the values as printed (rounded) with ties broken by name, so that a report rerun on
another CPU, whose predictions differ by a few images, lists the same classes in the same order."""

import os
from pathlib import Path

from cifar_keras.errors import UserError
from cifar_keras.reporting import runs

ANALYSIS_START = "![Training curves]("  # the first line of write_analysis's markdown


def most_confused(matrix, names, top=5):
    """The `top` largest off-diagonal cells of a square `matrix` as (row name, column name, value), ranked on
    the values rounded to whole numbers (as they are printed), ties by row then column name."""
    cells = [(-round(float(matrix[i][j])), names[i], names[j], float(matrix[i][j]))
             for i in range(len(names)) for j in range(len(names)) if i != j]
    return [(row, column, value) for _, row, column, value in sorted(cells)[:top]]


def model_figures(model, dataset, out_dir, split=None):
    """Confusion, per-class and example figures of `model` on `split` (default: the test set)."""
    from cifar_keras.evaluation.metrics import predict_probabilities
    from cifar_keras.reporting import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = dataset.test if split is None else split
    predicted = predict_probabilities(model, test.images).argmax(axis=1)
    names = {key: out_dir / f"{key}.png" for key in ("superclass_confusion", "per_class_accuracy", "examples")}
    matrix = plots.superclass_confusion(predicted, test.coarse, dataset.fine_to_coarse(), dataset.coarse_names,
                                        names["superclass_confusion"])
    ranking = plots.per_class_accuracy(predicted, test.fine, dataset.fine_names, names["per_class_accuracy"])
    plots.prediction_grid(test.images, predicted, test.fine, dataset.fine_names, names["examples"])
    return {
        "figures": names,
        "best": ranking[:5],
        "worst": ranking[-5:][::-1],
        "confused_pairs": plots.confused_pairs(predicted, test.fine, dataset.fine_names),
        "confused_superclasses": most_confused(matrix, dataset.coarse_names),
    }


def corruption_figure(records_dir, path):
    """Top-1 against severity (0: clean; mean over the corruptions) of every corruption record; False if none."""
    from cifar_keras.reporting import plots

    found = runs.corruption_records(records_dir)
    if not found:
        return False
    curves = {}
    for label, record, record_path in found:
        try:
            by_severity = record["summary"]["by_severity"]
            severities = sorted(int(s) for s in by_severity)
            curves[label] = ([0, *severities], [float(record["clean"]["top1"]),
                                                *(float(by_severity[str(s)]) for s in severities)])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{record_path}: malformed corruption record ({type(e).__name__}: {e})") from None
    plots.corruption_curves(curves, path)
    return True


def write_analysis(records_dir, figures_dir, page_dir, data_dir=None, name="cnn"):
    """Curves of every fit run, figures of the `name` model; the markdown that shows them on a page in
    `page_dir` (links relative to it)."""
    from cifar_keras import data, models
    from cifar_keras.reporting import plots

    # Model and data first: a missing one is a one-line error before any figure is written.
    model_path = Path(records_dir) / f"{name}.keras"
    model, dataset = models.load_keras_model(model_path), data.load(data_dir)
    points = runs.compute_points(records_dir)
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    curves = figures_dir / "training_curves.png"
    plots.training_curves(runs.epoch_logs(records_dir), curves)
    ablation_logs = runs.epoch_logs(Path(records_dir) / "ablations")
    if ablation_logs:
        plots.training_curves(ablation_logs, figures_dir / "ablation_curves.png")
    if points:
        plots.accuracy_vs_compute(points, figures_dir / "accuracy_vs_compute.png")
    corrupted = corruption_figure(records_dir, figures_dir / "corruption_severity.png")
    facts = model_figures(model, dataset, figures_dir)
    views = runs.VIEWS[models.tta_kind(model) or "none"]

    def link(path):
        return Path(os.path.relpath(Path(path).resolve(), Path(page_dir).resolve())).as_posix()

    def classes(pairs):
        return ", ".join(f"{n.replace('_', ' ')} ({a:.0f} %)" for n, a in pairs)

    lines = [
        f"{ANALYSIS_START}{link(curves)})",
        *([f"![Top-1 against training compute]({link(figures_dir / 'accuracy_vs_compute.png')})"] if points else []),
        *([f"![Ablation curves]({link(figures_dir / 'ablation_curves.png')})"] if ablation_logs else []),
        *([f"![Top-1 against corruption severity]({link(figures_dir / 'corruption_severity.png')})"]
          if corrupted else []),
        "",
        f"Test-set analysis of `{model_path.as_posix()}` as shipped ({views}); rankings on the rounded values, "
        "ties by name:",
        "",
        f"- best classes: {classes(facts['best'])};",
        f"- worst classes: {classes(facts['worst'])};",
        "- most frequent confusions (true → predicted, of 100 test images each): "
        + ", ".join(f"{t.replace('_', ' ')} → {p.replace('_', ' ')} ({c})" for t, p, c in facts["confused_pairs"]) + ";",
        "- superclasses most often mistaken for another (true → predicted, % of the true superclass): "
        + ", ".join(f"{t.replace('_', ' ')} → {p.replace('_', ' ')} ({v:.0f} %)"
                    for t, p, v in facts["confused_superclasses"]) + ".",
        "",
        f"![Superclass confusion]({link(facts['figures']['superclass_confusion'])})",
        f"![Per-class accuracy]({link(facts['figures']['per_class_accuracy'])})",
        f"![Test images with predictions]({link(facts['figures']['examples'])})",
    ]
    return "\n".join(lines)
