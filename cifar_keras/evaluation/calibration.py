"""Calibration: temperature scaling, fitted on the validation split (the scores it improves: scores.py).

Temperature scaling (Guo et al., 2017) divides a trained model's logits by one number T, fitted
on the validation split to minimise its negative log-likelihood. T > 1 softens an overconfident
model; dividing by T > 0 keeps the order of the logits, so the predicted classes, and every
accuracy, stay as they were. `with_temperature` folds T into the model as a built-in Keras
`Rescaling` layer named "temperature" just before the softmax, so the .keras file, its SavedModel
export, `predict` and the REST client all return calibrated probabilities, and plain
`keras.saving.load_model` still loads it.
"""

import math

import keras
import numpy as np
from scipy.optimize import minimize_scalar

from cifar_keras import models
from cifar_keras.data.pipeline import predict_outputs
from cifar_keras.evaluation.scores import BINS, scores

TEMPERATURE_RANGE = (0.05, 20.0)


# --- temperature scaling on logits --------------------------------------------------------------

def _as_list(logits_list):
    """A list of (N, C) float64 logit arrays: one array stands for a list of one."""
    if isinstance(logits_list, np.ndarray) and logits_list.ndim == 2:
        logits_list = [logits_list]
    return [np.asarray(z, np.float64) for z in logits_list]


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def probabilities(logits_list, temperature=1.0):
    """The model's probabilities at `temperature`: the mean over the logit sets (one per view of the
    image: one, or one per TTA view) of softmax(logits / T)."""
    views = _as_list(logits_list)
    return sum(np.exp(_log_softmax(z / temperature)) for z in views) / len(views)


def _nll_at(views, labels, temperature):
    """NLL of the mean over views of softmax(z / T), computed in log space (no floor needed)."""
    rows = np.arange(len(labels))
    true_log_p = np.stack([_log_softmax(z / temperature)[rows, labels] for z in views])  # views x N
    peak = true_log_p.max(axis=0)
    log_mean = peak + np.log(np.exp(true_log_p - peak).mean(axis=0))
    return float(-np.mean(log_mean))


def fit_temperature(logits_list, labels, low=TEMPERATURE_RANGE[0], high=TEMPERATURE_RANGE[1], grid=41, tol=1e-6):
    """The T > 0 in [low, high] that minimises the NLL of `labels` under the mean over the logit sets of
    softmax(logits / T).

    A grid on log T (T = 1 included) finds the best bracket, then scipy's bounded scalar minimiser refines it.
    The NLL is convex in 1/T for one logit set, hence unimodal in log T; the grid guards the average over TTA
    views, whose NLL need not be unimodal. The answer is the best T tried, so never worse on these labels than
    T = 1: calibrating cannot raise the NLL it is fitted on.
    """
    views, labels = _as_list(logits_list), np.asarray(labels)

    def cost(log_t):
        return _nll_at(views, labels, math.exp(log_t))

    points = sorted(set(np.linspace(math.log(low), math.log(high), grid).tolist()) | {0.0})
    costs = [cost(p) for p in points]
    best = int(np.argmin(costs))
    bracket = (points[max(best - 1, 0)], points[min(best + 1, len(points) - 1)])
    refined = minimize_scalar(cost, bounds=bracket, method="bounded", options={"xatol": tol})
    return math.exp(refined.x if refined.fun < costs[best] else points[best])


def before_after(logits_list, labels, temperature, bins=BINS):
    """ECE, NLL and Brier score of the model's probabilities at T = 1 and at `temperature`."""
    return {"before": scores(probabilities(logits_list), labels, bins),
            "after": scores(probabilities(logits_list, temperature), labels, bins)}


# --- the model side ------------------------------------------------------------------------------

def logits_tensor(model):
    """The symbolic input of the model's final softmax layer "probabilities": its (scaled) logits."""
    return model.get_layer("probabilities").input


def logit_model(model):
    """A sub-model of a (non-TTA) model from its input to its logits, sharing its layers."""
    return keras.Model(model.input, logits_tensor(model), name=f"{model.name}_logits")


def model_logits(model, images, batch_size=500):
    """The logits (float64) the model's softmax sees for uint8 `images` (N, 32, 32, 3): a list of one
    (N, C) array, or for a TTA model one per view, repeated as often as the view counts in its average
    (models.tta_views)."""
    kind = models.tta_kind(model)
    if kind:
        sub = logit_model(models.tta_inner(model))
        return [logits for rows, columns, count in models.tta_views(kind == "flip_translate")
                for logits in [predict_outputs(sub, models.move_pixels(images, rows, columns), batch_size)] * count]
    return [predict_outputs(logit_model(model), images, batch_size)]


def with_temperature(model, temperature):
    """A new functional model equal to `model` (sharing its layers and weights) whose softmax sees its
    current logits divided by `temperature`: logits -> Rescaling(1/T, name="temperature") -> float32
    softmax "probabilities". A model that already has a temperature keeps one such layer, with the
    product of both temperatures. A TTA model gets its inner model calibrated and re-wrapped.
    Built-in layers only: plain `keras.saving.load_model` loads the result."""
    kind = models.tta_kind(model)
    if kind:
        inner = with_temperature(models.tta_inner(model), temperature)
        return models.with_tta(inner, translate=kind == "flip_translate")
    logits, scale = logits_tensor(model), 1.0 / temperature
    if any(layer.name == "temperature" for layer in model.layers):
        previous = model.get_layer("temperature")
        logits, scale = previous.input, float(previous.scale) * scale
    x = keras.layers.Rescaling(scale, dtype="float32", name="temperature")(logits)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(model.input, outputs, name=model.name)


def temperature_of(model):
    """The temperature folded into a model (1.0 if none)."""
    inner = models.tta_inner(model) if models.tta_kind(model) else model
    if any(layer.name == "temperature" for layer in inner.layers):
        return 1.0 / float(inner.get_layer("temperature").scale)
    return 1.0


def calibrate(model, val_split, test_split=None, batch_size=500):
    """Fit T on `val_split` and fold it into `model`. Returns (calibrated model, record, test logits): record =
    {"temperature", "bins", "val": {"before", "after"}, "test": {"before", "after"} or None}; the test logits
    (model_logits, None without `test_split`) are the one pass over the test images that the test scores
    come from: `probabilities(test_logits, T)` are the calibrated model's outputs."""
    val_logits = model_logits(model, val_split.images, batch_size)
    temperature = fit_temperature(val_logits, val_split.fine)
    record = {"temperature": temperature, "bins": BINS, "val": before_after(val_logits, val_split.fine, temperature),
              "test": None}
    test_logits = None
    if test_split is not None:
        test_logits = model_logits(model, test_split.images, batch_size)
        record["test"] = before_after(test_logits, test_split.fine, temperature)
    return with_temperature(model, temperature), record, test_logits


def rounded(record, digits=4):
    """`record` with every float rounded to `digits` decimals (temperatures to 6), for a run record."""
    if isinstance(record, dict):
        return {k: rounded(v, 6 if k.startswith("temperature") else digits) for k, v in record.items()}
    return round(record, digits) if isinstance(record, float) else record
