"""Scores of a model's probabilities (N, C) against the labels (N,): expected calibration error (and its
confidence bins, which the reliability diagrams draw), negative log-likelihood, Brier score. numpy only."""

import numpy as np

BINS = 15  # the usual ECE binning (Guo et al., 2017)


def reliability_bins(probabilities, labels, bins=BINS):
    """Images binned by confidence (their top probability) into `bins` equal-width bins (lo, hi] of [0, 1]: per
    bin, (share of images, accuracy, mean confidence), each a (bins,) array; NaN accuracy and confidence where
    a bin is empty. The one binning of the ECE and of the reliability diagrams (reporting/plots.py)."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    index = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence, side="left")  # bin i: (edge_i, edge_i+1]
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
    return counts / len(confidence), accuracy, mean_confidence


def ece(probabilities, labels, bins=BINS):
    """Expected calibration error: the mean over the confidence bins (reliability_bins), weighted by their share
    of images, of |accuracy - mean confidence| within the bin."""
    share, accuracy, confidence = reliability_bins(probabilities, labels, bins)
    filled = share > 0
    return float(np.sum(share[filled] * np.abs(accuracy[filled] - confidence[filled])))


def nll(probabilities, labels, floor=1e-12):
    """Mean negative log-likelihood of the true classes (probabilities floored at `floor`)."""
    probabilities = np.asarray(probabilities, np.float64)
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], floor))))


def brier(probabilities, labels):
    """Multiclass Brier score: mean over images of the sum over classes of (p - one-hot)^2 (0 best, 2 worst)."""
    probabilities = np.asarray(probabilities, np.float64)
    onehot = np.zeros_like(probabilities)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))


def scores(probabilities, labels, bins=BINS):
    return {"ece": ece(probabilities, labels, bins), "nll": nll(probabilities, labels),
            "brier": brier(probabilities, labels)}
