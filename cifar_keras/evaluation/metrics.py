"""Test-set metrics of a trained model: top-1, top-5 and superclass accuracy, and how well its
probabilities are calibrated (ECE, NLL, Brier score)."""

import numpy as np

from cifar_keras.data.pipeline import predict_outputs
from cifar_keras.evaluation.scores import scores


def predict_probabilities(model, images, batch_size=500):
    return predict_outputs(model, images, batch_size)


def metrics(probabilities, fine, coarse, fine_to_coarse):
    """Accuracies in percent; superclass = coarse label of the predicted fine class. ece (15 bins), nll and
    brier: see scores.py (records written before 2026-11-30 also hold "loss", equal to nll)."""
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    top1 = top5[:, 0]
    return {
        "top1": 100.0 * float(np.mean(top1 == fine)),
        "top5": 100.0 * float(np.mean((top5 == fine[:, None]).any(axis=1))),
        "superclass": 100.0 * float(np.mean(fine_to_coarse[top1] == coarse)),
        **scores(probabilities, fine),
        "images": int(len(fine)),
    }


def evaluate_model(model, split, fine_to_coarse, batch_size=500):
    return metrics(predict_probabilities(model, split.images, batch_size), split.fine, split.coarse, fine_to_coarse)


def evaluate_predictor(predictor, split, fine_to_coarse, batch_size=500):
    """The same metrics for an exported model in its own runtime (a runtimes.Predictor), batch by batch."""
    probabilities = np.concatenate([predictor(split.images[i:i + batch_size].astype(np.float32))
                                    for i in range(0, len(split.images), batch_size)])
    return metrics(probabilities.astype(np.float64), split.fine, split.coarse, fine_to_coarse)
