"""Figures of a results report (matplotlib, PNG): curves, confusions, per-class accuracy, examples."""

import csv

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cifar_keras.evaluation import scores  # noqa: E402

PNG = {"dpi": 110, "metadata": {"Software": None}}  # no version stamp: same inputs, same bytes


def training_curves(logs, path):
    """Accuracy and loss per epoch, training (dashed) and validation (solid), one colour per run."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, log_path), colour in zip(sorted(logs.items()), plt.cm.tab10.colors):
        with open(log_path, newline="") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) + 1 for r in rows]
        for ax, key, scale in ((acc_ax, "accuracy", 100), (loss_ax, "loss", 1)):
            ax.plot(epochs, [scale * float(r[key]) for r in rows], "--", color=colour, label=f"{name} train")
            ax.plot(epochs, [scale * float(r[f"val_{key}"]) for r in rows], "-", color=colour, label=f"{name} val")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    loss_ax.set(xlabel="epoch", ylabel="loss (cross-entropy with the run's label smoothing)", title="Loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def superclass_confusion(predicted_fine, coarse, fine_to_coarse, coarse_names, path):
    """Row-normalised 20x20 confusion of true superclass vs superclass of the predicted class."""
    n = len(coarse_names)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (coarse, fine_to_coarse[predicted_fine]), 1)
    matrix = 100 * matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(10, 9))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), coarse_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), coarse_names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if matrix[i, j] >= 1:
                ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] > 50 else "black")
    ax.set(xlabel="predicted superclass", ylabel="true superclass", title="Superclass confusion (% of each row)")
    fig.colorbar(image, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)
    return matrix


def per_class_accuracy(predicted_fine, fine, fine_names, path):
    """Sorted bar chart of test accuracy per class; returns [(name, accuracy %)], best first (ties by name)."""
    n = len(fine_names)
    accuracy = 100 * np.bincount(fine, weights=predicted_fine == fine, minlength=n) / np.bincount(fine, minlength=n).clip(min=1)
    # Ranked on the accuracies as printed (whole percents), ties by name: the same order on every machine.
    order = sorted(range(n), key=lambda i: (-round(float(accuracy[i])), fine_names[i]))
    fig, ax = plt.subplots(figsize=(16, 4.5))
    ax.bar(range(n), accuracy[order], color=plt.cm.viridis(accuracy[order] / 100))
    ax.set_xticks(range(n), [fine_names[i] for i in order], rotation=90, fontsize=6)
    ax.set(ylabel="test top-1 accuracy (%)", title="Per-class test accuracy", xlim=(-1, n))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)
    return [(fine_names[i], float(accuracy[i])) for i in order]


def prediction_grid(images, predicted_fine, fine, fine_names, path, columns=8, rows=6):
    """Test images with true and predicted labels; mistakes in red."""
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9))
    for ax, image, predicted, true in zip(axes.flat, images, predicted_fine, fine):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = predicted != true
        ax.set_title(f"{fine_names[true]}\n→ {fine_names[predicted]}", fontsize=7, color="red" if wrong else "green")
        if wrong:
            for spine in ax.spines.values():
                spine.set(color="red", linewidth=2)
    fig.suptitle("Test images: true label → prediction (mistakes in red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def confused_pairs(predicted_fine, fine, fine_names, top=10):
    """The most frequent (true, predicted) mistakes: [(true name, predicted name, count)], ties by name."""
    n = len(fine_names)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (fine, predicted_fine), 1)
    np.fill_diagonal(counts, 0)
    i, j = np.nonzero(counts)
    ranked = sorted(zip(-counts[i, j], (fine_names[k] for k in i), (fine_names[k] for k in j)))[:top]
    return [(true, predicted, int(-negative)) for negative, true, predicted in ranked]


def spread(positions, gap, low, high):
    """`positions` (ascending) moved as little as this simple rule allows so that neighbours are at least
    `gap` apart and all lie in [low, high]: pushed up from the lowest, then down from the highest."""
    placed = []
    for y in positions:
        placed.append(max(y, low, placed[-1] + gap) if placed else max(y, low))
    for k in range(len(placed) - 1, -1, -1):
        placed[k] = min(placed[k], high if k == len(placed) - 1 else placed[k + 1] - gap)
    return placed


def accuracy_vs_compute(points, path, width=10.0):
    """Top-1 against training compute (PFLOP, log scale), one marker per run, its name in a column right of
    the axes, in the order of the runs' scores, joined to its marker by a thin line; returns the labels'
    boxes (pixels), which never overlap.

    `points`: dicts with name, pflop, top1, test (True: a test score, as shipped, else validation, single
    view) and flip_tta (the validation score with flip TTA, or None), drawn hollow and joined by a thin line.
    """
    fontsize, line = 7, 1.35  # label height in points, and the spacing between labels in label heights
    height = max(5.0, 1.2 + len(points) * fontsize * line / 72 / 0.84)  # every label fits the column
    fig, ax = plt.subplots(figsize=(width, height))
    fig.subplots_adjust(left=0.07, right=0.66, bottom=0.08, top=0.92)
    styles = {True: ("o", "C0", "test top-1, as shipped"), False: ("s", "C1", "validation top-1, single view")}
    labelled = set()
    for p in points:
        marker, colour, label = styles[p["test"]]
        ax.plot(p["pflop"], p["top1"], marker, color=colour, label=None if label in labelled else label, zorder=3)
        labelled.add(label)
        if p.get("flip_tta") is not None:
            label = "validation top-1, flip (2 views)"
            ax.plot([p["pflop"]] * 2, [p["top1"], p["flip_tta"]], "-", color="grey", linewidth=0.6)
            ax.plot(p["pflop"], p["flip_tta"], "D", markerfacecolor="none", color="C2",
                    label=None if label in labelled else label, zorder=3)
            labelled.add(label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set(xlabel="training compute (PFLOP, analytic count)", ylabel="top-1 accuracy (%)",
           title="Top-1 against training compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    # The label column: each run at its marker's height where there is room, else moved the least.
    fig.canvas.draw()  # the axes' limits, which place the markers
    ordered = sorted(points, key=lambda p: (p["top1"], p["name"]))
    axes_height = ax.get_position().height * height * 72  # points
    heights = [ax.transAxes.inverted().transform(ax.transData.transform((p["pflop"], p["top1"])))[1]
               for p in ordered]
    gap = fontsize * line / axes_height
    texts = [ax.annotate(f"{p['name']} ({p['top1']:.1f} %)", xy=(p["pflop"], p["top1"]), xytext=(1.03, y),
                         textcoords="axes fraction", va="center", fontsize=fontsize, annotation_clip=False,
                         arrowprops={"arrowstyle": "-", "color": "0.65", "linewidth": 0.5, "shrinkA": 0,
                                     "shrinkB": 3})
             for p, y in zip(ordered, spread(heights, gap, gap / 2, 1 - gap / 2))]
    fig.savefig(path, **PNG)
    renderer = fig.canvas.get_renderer()
    boxes = [matplotlib.text.Text.get_window_extent(text, renderer) for text in texts]  # the text, not its line
    plt.close(fig)
    return boxes


def reliability_diagram(probabilities, labels, path, title, bins=15):
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration (hatched in
    red: each bin's gap to its mean confidence), with each bin's share of images below and the ECE.

    `probabilities`: an (N, C) array, or a dict {panel name: array} drawn side by side (e.g. before and after
    calibration) on the same `labels`."""
    panels = probabilities if isinstance(probabilities, dict) else {"": probabilities}
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = 1.0 / bins
    centres = (np.arange(bins) + 0.5) * width
    for (name, probs), top, bottom in zip(panels.items(), axes[0], axes[1]):
        share, accuracy, confidence = scores.reliability_bins(probs, labels, bins)
        filled = share > 0
        ece = scores.ece(probs, labels, bins)
        top.bar(centres[filled], accuracy[filled], width=width, color="C0", edgecolor="black", linewidth=0.5,
                label="accuracy")
        top.bar(centres[filled], confidence[filled] - accuracy[filled], bottom=accuracy[filled], width=width,
                fill=False, hatch="///", edgecolor="C3", linewidth=0.5, zorder=3, label="gap to mean confidence")
        top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        top.text(0.04, 0.93, f"ECE {ece:.3f} ({bins} bins)", transform=top.transAxes, fontsize=9,
                 bbox={"facecolor": "white", "edgecolor": "none"})
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=name)
        top.grid(alpha=0.3)
        top.legend(fontsize=7, loc="lower right")
        bottom.bar(centres, 100 * share, width=width, color="grey", edgecolor="black", linewidth=0.5)
        bottom.set(xlabel="confidence (top probability)", ylabel="% of images")
        bottom.grid(alpha=0.3)
    highest = max(ax.get_ylim()[1] for ax in axes[1])
    for ax in axes[1]:
        ax.set_ylim(0, highest)  # the panels' shares on one scale
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def corruption_curves(curves, path, title="Top-1 under corruption (mean over the corruption types)"):
    """Top-1 against corruption severity, one line per model; severity 0 is the clean images.

    `curves`: {label: (severities, top-1 %)}, e.g. from the summaries of `evaluate --corruptions` records."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (label, (severities, top1)), marker in zip(sorted(curves.items()), "osD^v<>p*h"):
        ax.plot(severities, top1, marker=marker, label=label)
    ax.set_xticks(sorted({s for severities, _ in curves.values() for s in severities}))
    ax.set(xlabel="severity (0: clean)", ylabel="top-1 accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)
