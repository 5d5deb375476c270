"""The corruption benchmark: a model scored on a split clean and under every corruption x severity
(corruptions.py), with a progress bar, the summary means and a plain-text table."""

import sys
import time

import numpy as np

from cifar_keras.data.cifar100 import Split
from cifar_keras.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt


class Progress:
    """A progress bar on standard error: redrawn in place on a terminal, one line per `every` steps otherwise."""

    def __init__(self, total, stream=None, every=5, width=30):
        self.total, self.done, self.every, self.width = total, 0, every, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def step(self, label):
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        filled = self.width * self.done // self.total
        line = (f"[{'=' * filled}{' ' * (self.width - filled)}] {self.done}/{self.total} {label:<22} "
                f"{elapsed:5.0f} s, ~{eta:.0f} s left")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
        elif self.done % self.every == 0 or self.done in (1, self.total):
            self.stream.write(line + "\n")
        self.stream.flush()


def benchmark(score, split, names=CORRUPTIONS, severities=SEVERITIES, seed=0, progress=True):
    """Score a model on `split` clean and under every corruption x severity.

    score: a function Split -> metrics dict with "top1" (evaluate.evaluate_model or evaluate_predictor with the
    model bound). Returns {"clean": metrics, "corrupted": [{"corruption", "severity", **metrics}, ...],
    "summary": {"mean_corruption_top1" (mean over all pairs), "top1_drop" (clean minus that),
    "by_corruption" (mean top-1 over the severities), "by_severity" (mean top-1 over the corruptions)},
    "corruption_time_s", "scoring_time_s"}."""
    bar = Progress(1 + len(names) * len(severities), stream=None if progress else _Silent())
    timing = {"corruption": 0.0, "scoring": 0.0}
    start = time.perf_counter()
    clean = score(split)
    timing["scoring"] += time.perf_counter() - start
    bar.step("clean")
    corrupted = []
    for name in names:
        for severity in severities:
            start = time.perf_counter()
            images = corrupt(split.images, name, severity, seed)
            middle = time.perf_counter()
            metrics = score(Split(images, split.fine, split.coarse))
            timing["corruption"] += middle - start
            timing["scoring"] += time.perf_counter() - middle
            corrupted.append({"corruption": name, "severity": severity, **metrics})
            bar.step(f"{name} {severity}")
    return {"clean": clean, "corrupted": corrupted, "summary": summarise(clean, corrupted),
            "corruption_time_s": round(timing["corruption"], 2), "scoring_time_s": round(timing["scoring"], 2)}


class _Silent:
    def write(self, text):
        pass

    def flush(self):
        pass


def summarise(clean, corrupted):
    """Mean top-1 over all corruption x severity pairs, per corruption (over severities), per severity."""
    def mean(rows):
        return float(np.mean([r["top1"] for r in rows]))

    names = list(dict.fromkeys(r["corruption"] for r in corrupted))
    severities = sorted({r["severity"] for r in corrupted})
    overall = mean(corrupted)
    return {"mean_corruption_top1": overall, "top1_drop": float(clean["top1"]) - overall,
            "by_corruption": {n: mean([r for r in corrupted if r["corruption"] == n]) for n in names},
            "by_severity": {str(s): mean([r for r in corrupted if r["severity"] == s]) for s in severities}}


def table(record):
    """Top-1 (%) per corruption (rows) and severity (columns), with the means, as plain text."""
    severities = sorted({r["severity"] for r in record["corrupted"]})
    summary = record["summary"]
    top1 = {(r["corruption"], r["severity"]): r["top1"] for r in record["corrupted"]}
    lines = [f"{'top-1 %':<18}" + "".join(f"{'sev ' + str(s):>8}" for s in severities) + f"{'mean':>8}"]
    for name, mean in summary["by_corruption"].items():
        lines.append(f"{name:<18}" + "".join(f"{top1[(name, s)]:8.2f}" for s in severities) + f"{mean:8.2f}")
    lines.append(f"{'mean':<18}" + "".join(f"{summary['by_severity'][str(s)]:8.2f}" for s in severities)
                 + f"{summary['mean_corruption_top1']:8.2f}")
    lines.append(f"clean top-1 {record['clean']['top1']:.2f} %, mean corruption top-1 "
                 f"{summary['mean_corruption_top1']:.2f} % ({len(record['corrupted'])} corruption x severity pairs, "
                 f"{record['images']} images)")
    return "\n".join(lines)
