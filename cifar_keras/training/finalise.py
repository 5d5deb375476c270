"""Finalising a trained run: the float32 model to save (weight average or best epoch, test-time augmentation,
calibrated) and its scores; the test set is used here, once.

Every image goes through the network once per view of the test-time augmentation: each view's logits are
computed once and serve the choice of weights, the TTA scores, the temperature and the test scores.
"""

import dataclasses

from cifar_keras import hardware, models
from cifar_keras.data.pipeline import predict_outputs
from cifar_keras.evaluation import calibration
from cifar_keras.evaluation.metrics import metrics


def float32_model(config):
    """A new, untrained model of `config` in float32."""
    with hardware.precision_policy("float32"):
        return models.get_spec(config.model).build(**config.model_args)


def float32_copy(config, weights):
    model = float32_model(config)
    model.set_weights(weights)
    return model


def tta_views(config):
    """The views the saved model averages, as models.tta_views: the image alone without test-time augmentation;
    the image and its mirror with flip TTA; six with flip-and-translate TTA. The first view
    is always the image itself, and the first two are flip TTA's."""
    return models.tta_views(config.tta_translate) if config.tta else [(None, None, 1)]


def view_logits(model, images, views):
    """The logits of `model` (one network, no TTA) on each view of uint8 `images`: one pass per distinct view."""
    logits = calibration.logit_model(model)
    return [predict_outputs(logits, models.move_pixels(images, rows, columns)) for rows, columns, _ in views]


def counted(logits, views):
    """The logit sets of a TTA average (calibration's form): each view's as often as the view counts."""
    return [z for z, (_, _, count) in zip(logits, views) for _ in range(count)]


def scores(logit_sets, split, fine_to_coarse, temperature=1.0):
    """metrics() of the mean over `logit_sets` of softmax(logits / temperature) on `split`."""
    return metrics(calibration.probabilities(logit_sets, temperature), split.fine, split.coarse, fine_to_coarse)


def top1(logit_sets, split, fine_to_coarse):
    return round(scores(logit_sets, split, fine_to_coarse)["top1"], 2)


@dataclasses.dataclass
class Finalised:
    """What finalise made: the float32 network (`base`), the saved model (`model`: with TTA if asked, calibrated),
    and its scores."""

    base: object
    model: object
    views: int  # distinct views of an image that `model` averages: 1, 2 (flip TTA) or 6 (flip-and-translate TTA)
    val: dict
    calibration: dict
    test: dict  # of `model`, as shipped; None without the test set
    test_single_view: dict  # of its network alone (calibrated, no TTA) on the raw test images; None without


def finalise(plan, model, averaged, dataset, val_split):
    """The float32 model to save and its scores (Finalised), saved to the run's model file.

    With weight averaging, the averaged weights and the best epoch's compete on validation (one view). With TTA,
    each TTA's gain is measured on validation, side by side, and recorded. Recipe studies (ablations, --no-test)
    judge on validation only and leave the test set unseen."""
    config, views = plan.config, tta_views(plan.config)
    fine_to_coarse = dataset.fine_to_coarse()
    # The saved model is float32 whatever precision trained it: it runs anywhere, and the test score below is the
    # score of exactly that file.
    base = float32_copy(config, model.get_weights())
    val_logits = view_logits(base, val_split.images, views[:1])
    val = {"top1_float32": top1(val_logits, val_split, fine_to_coarse)}
    if averaged is not None:
        candidate = float32_copy(config, averaged)
        candidate_logits = view_logits(candidate, val_split.images, views[:1])
        val["top1_ema"] = top1(candidate_logits, val_split, fine_to_coarse)
        val["saved_weights"] = "ema" if val["top1_ema"] > val["top1_float32"] else "best_epoch"
        if val["saved_weights"] == "ema":
            base, val_logits = candidate, candidate_logits
    val_logits += view_logits(base, val_split.images, views[1:])
    if config.tta:
        val["top1_flip_tta"] = top1(val_logits[:2], val_split, fine_to_coarse)
        if config.tta_translate:
            val["top1_flip_translate_tta"] = top1(counted(val_logits, views), val_split, fine_to_coarse)
    final, fitted = calibrated(base, config, counted(val_logits, views), val_split)
    test = single = None
    if config.test_set:
        test_logits = view_logits(base, dataset.test.images, views)
        fitted["test"] = calibration.before_after(counted(test_logits, views), dataset.test.fine,
                                                  fitted["temperature"])
        test = scores(counted(test_logits, views), dataset.test, fine_to_coarse, fitted["temperature"])
        single = scores(test_logits[:1], dataset.test, fine_to_coarse, fitted["temperature"])
    final.save(plan.paths["model"])
    return Finalised(base, final, len(views), val, calibration.rounded(fitted), test, single)


def calibrated(base, config, val_logits, val_split):
    """The model to save: `base` (with TTA if asked) with a temperature fitted on its validation logits folded in
    (calibration.py), and the calibration record (its "test" part: None, for the caller to fill).

    Always on, no option: the temperature minimises the validation NLL with T = 1 among the candidates, so it
    cannot raise it, and dividing the logits by T > 0 leaves every predicted class as it was."""
    temperature = calibration.fit_temperature(val_logits, val_split.fine)
    fitted = {"temperature": temperature, "bins": calibration.BINS,
              "val": calibration.before_after(val_logits, val_split.fine, temperature),
              "test": None}
    shipped = models.with_tta(base, translate=config.tta_translate) if config.tta else base
    return calibration.with_temperature(shipped, temperature), fitted
