"""`export`: a trained .keras model in a deployment format, in the layout its servers expect.

Every format takes `pixels`, a float32 batch (None, 32, 32, 3) of raw RGB values in 0-255 (no
normalisation needed), and returns `probabilities` (None, CLASSES), CLASSES being the model's (100);
class i is line i of labels.txt.

- saved_model (TF Serving): NAME/VERSION/saved_model.pb + variables/, labels in
  assets.extra/labels.txt (which TF Serving ignores). Its `serving_default` signature also
  returns `top5_classes` (None, 5, int32) and `top5_probabilities` (None, 5).
- onnx (onnxruntime, Triton, OpenVINO Model Server): NAME/VERSION/model.onnx + labels.txt.
- litert (ai-edge-litert's interpreter, TFLite): NAME/VERSION/model.tflite + labels.txt;
  int8: model_int8.tflite beside it.
- openvino (OpenVINO runtime, OpenVINO Model Server): NAME/VERSION/model.xml + model.bin +
  labels.txt; int8 (nncf post-training quantisation): model_int8.xml + model_int8.bin beside it.

int8 models are calibrated on training images (never test images) and keep float32 inputs and
outputs, so the contract above holds for them too. onnx, litert and openvino need the TensorFlow
backend and the `deploy` extra (`pip install -e '.[deploy]'`); saved_model needs neither.
"""

import logging
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from cifar_keras.data.classes import COARSE_NAMES, FINE_NAMES
from cifar_keras.errors import UserError
from cifar_keras.subprocess_json import Failed, run_json
from cifar_keras.deploy.runtimes import INT8_FILES, MODEL_FILES, RUNTIMES, require

LABELS_FILE = Path("assets.extra") / "labels.txt"
FORMATS = ("saved_model", "onnx", "litert", "openvino")
INT8_FORMATS = ("litert", "openvino")
PIXELS = keras.InputSpec(shape=(None, 32, 32, 3), dtype="float32", name="pixels")


def next_version(base):
    """One more than the highest numeric version folder under `base` (1 if none)."""
    versions = [int(p.name) for p in Path(base).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def serving_fn(model):
    def serve(pixels):
        probabilities = model(keras.ops.cast(pixels, "float32"), training=False)
        # argsort rather than top_k: JAX lowers top_k to a StableHLO composite that
        # TensorFlow's loader may be too old to read.
        top5_classes = keras.ops.argsort(-probabilities, axis=-1)[:, :5]
        top5_probabilities = keras.ops.take_along_axis(probabilities, top5_classes, axis=-1)
        return {"probabilities": probabilities, "top5_classes": keras.ops.cast(top5_classes, "int32"),
                "top5_probabilities": top5_probabilities}

    return serve


def probabilities_fn(model):
    return lambda pixels: {"probabilities": model(keras.ops.cast(pixels, "float32"), training=False)}


def write_archive(model, fn, path):
    """A SavedModel at `path` whose serving_default signature is `fn(pixels)`, each variable stored once.

    Keras' own recipe (`ExportArchive.track(model)`, then `add_endpoint`) stores every variable
    twice on the TensorFlow backend: `track` saves the Keras variables (`keras.Variable`, a
    trackable wrapper that serialises its value itself), while the endpoint's captured inputs
    (`_all_variables`, the tf.Variables inside those wrappers) are saved again, and the
    checkpoint deduplicates objects, not values. Registering the inner tf.Variables as the
    archive's variable collections instead makes both references the same objects: one copy,
    and the reloaded object still lists them (`.variables`, `.trainable_variables`, ...).
    On JAX, `track` converts each variable to one tf.Variable that the endpoint uses: one copy.
    """
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise UserError(f"SavedModel export needs the tensorflow or jax backend, not {backend} "
                        "(set KERAS_BACKEND=tensorflow)")
    archive = keras.export.ExportArchive()
    if backend == "jax":
        archive.track(model)
    archive.add_endpoint("serving_default", fn, input_signature=[PIXELS])
    if backend == "tensorflow":
        for name in ("variables", "trainable_variables", "non_trainable_variables"):
            archive.add_variable_collection(name, [variable.value for variable in getattr(model, name)])
    archive.write_out(str(path), verbose=False)


def class_names(model):
    """The names of `model`'s output classes, line i of labels.txt naming output i: CIFAR-100's classes, or its
    superclasses for a model with 20 outputs."""
    classes = model.output_shape[-1]
    names = {len(FINE_NAMES): FINE_NAMES, len(COARSE_NAMES): COARSE_NAMES}.get(classes)
    if names is None:
        raise UserError(f"{model.name}: {classes} output classes; CIFAR-100 has {len(FINE_NAMES)} classes and "
                        f"{len(COARSE_NAMES)} superclasses")
    return names


def write_labels(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(class_names(model)) + "\n")


def write_saved_model(model, target, calibration=None):
    write_archive(model, serving_fn(model), target)
    write_labels(model, target / LABELS_FILE)


def needs_tensorflow_backend(fmt):
    if keras.backend.backend() != "tensorflow":
        raise UserError(f"{fmt} export needs the tensorflow backend, not {keras.backend.backend()} "
                        "(set KERAS_BACKEND=tensorflow)")


def write_onnx(model, target, calibration=None):
    """model.onnx via tf2onnx, from the forward pass frozen into constants.

    Not `model.export(format="onnx")`: Keras passes the traced function to
    tf2onnx.convert.from_function, which turns every captured tensor that is not a variable
    into a graph input, and the models' Normalization layer captures its mean and variance as
    such tensors. The ONNX file then asks for them at run time (onnxruntime: "Required inputs
    (['cnn_1/normalise_1/Sub/y:0', 'cnn_1/normalise_1/Sqrt/x:0']) are missing"). Freezing first
    makes them constants.
    """
    needs_tensorflow_backend("onnx")
    tf2onnx = require("tf2onnx", "tf2onnx", "onnx export")
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda pixels: model(pixels, training=False), autograph=False)
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(
        tf.TensorSpec(PIXELS.shape, tf.float32, name="pixels")))
    inputs, outputs = [t.name for t in frozen.inputs], [t.name for t in frozen.outputs]
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel(logging.ERROR)  # tf2onnx's own calls to deprecated TensorFlow functions
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs,
                                       tensors_to_rename={inputs[0]: "pixels", outputs[0]: "probabilities"},
                                       output_path=str(target / MODEL_FILES["onnx"]))
    finally:
        logger.setLevel(level)
    write_labels(model, target / "labels.txt")


def representative_batches(images):
    return ([image[None].astype(np.float32)] for image in images)


def write_litert(model, target, calibration=None):
    """model.tflite (TFLite built-in ops only, so the plain LiteRT interpreter runs it), and with
    `calibration` images model_int8.tflite: full-integer post-training quantisation (int8
    weights and activations) with float32 input and output."""
    needs_tensorflow_backend("litert")
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        write_archive(model, probabilities_fn(model), tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        (target / MODEL_FILES["litert"]).write_bytes(converter.convert())
        if calibration is not None:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: representative_batches(calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
            (target / INT8_FILES["litert"]).write_bytes(converter.convert())
    write_labels(model, target / "labels.txt")


def write_openvino(model, target, calibration=None):
    """model.xml/.bin (float32 weights, not OpenVINO's default fp16 compression), and with
    `calibration` images model_int8.xml/.bin from nncf's post-training quantisation."""
    needs_tensorflow_backend("openvino")
    if calibration is not None:
        nncf = require("nncf", "nncf", "openvino int8 export")
    ov = require("openvino", "openvino", "openvino export")
    with tempfile.TemporaryDirectory() as tmp:
        write_archive(model, probabilities_fn(model), tmp)
        ov_model = ov.convert_model(tmp)
    ov.save_model(ov_model, target / MODEL_FILES["openvino"], compress_to_fp16=False)
    if calibration is not None:
        nncf.set_log_level(logging.ERROR)
        dataset = nncf.Dataset([image[None].astype(np.float32) for image in calibration])
        quantized = nncf.quantize(ov_model, dataset, subset_size=len(calibration))
        ov.save_model(quantized, target / INT8_FILES["openvino"], compress_to_fp16=False)
    write_labels(model, target / "labels.txt")


WRITERS = {"saved_model": write_saved_model, "onnx": write_onnx, "litert": write_litert, "openvino": write_openvino}


def artifacts(target, fmt):
    """[(path, precision)] of the models an export wrote into `target`."""
    if fmt == "saved_model":
        return [(Path(target), "float32")]
    found = [(Path(target) / MODEL_FILES[fmt], "float32")]
    if fmt in INT8_FILES and (Path(target) / INT8_FILES[fmt]).is_file():
        found.append((Path(target) / INT8_FILES[fmt], "int8"))
    return found


VIEWS = {1: "none", 2: "flip", 6: "flip_translate"}  # views of each image -> test-time augmentation (models/tta.py)


def with_views(model, views=None):
    """The net an export of `model` ships: `model` as it is (None), or its net averaged over `views` views of
    each image: 1 the single-view net (a TTA model's inner net), 2 the image and its mirror, 6 flip and translate."""
    from cifar_keras import models

    if views is None:
        return model
    if views not in VIEWS:
        raise UserError(f"--views {views}: choose from {', '.join(map(str, VIEWS))}")
    return models.with_tta_kind(model, VIEWS[views])


def views_of(model):
    """How many views of each image `model` averages: 1, 2 (flip TTA) or 6 (flip and translate TTA)."""
    from cifar_keras import models

    kind = models.tta_kind(model) or "none"
    return next(views for views, name in VIEWS.items() if name == kind)


def check_format(fmt, int8=False):
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise UserError(f"--int8 is available for {' and '.join(INT8_FORMATS)}, not {fmt}")


def export_model(model, root, name, version=None, fmt="saved_model", calibration=None):
    """Write root/name/version/ in `fmt`'s layout (int8 models too when `calibration` images are given,
    for litert and openvino); return that folder. A failed export leaves no version folder behind."""
    check_format(fmt, calibration is not None)
    class_names(model)  # a model without CIFAR-100's outputs fails before anything is written
    base = Path(root) / name
    version = version or next_version(base)
    target = base / str(version)
    if target.exists():
        raise UserError(f"{target}: version {version} already exists; pick another --version")
    try:
        if fmt != "saved_model":
            target.mkdir(parents=True)
        WRITERS[fmt](model, target, calibration)
    except BaseException:
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def calibration_images(data_dir, count, seed=0):
    """`count` training images (uint8, stratified over the classes) for int8 calibration: never test
    images, and outside fit's validation split (the default one) where the data set has room for it."""
    from cifar_keras import data
    from cifar_keras.config import DEFAULTS

    train = data.load(data_dir).train
    try:
        train, _ = data.train_val_split(train, DEFAULTS.val_size, seed=DEFAULTS.seed)
    except UserError:  # a data set too small for the default validation split (the tests' synthetic one)
        pass
    classes = len(np.unique(train.fine))
    rest, chosen = np.arange(len(train.fine)), np.array([], dtype=int)
    if count >= classes:  # count // classes of every class
        rest, chosen = data.stratified_split(train.fine, count // classes, seed, option="--calibration-images")
    if count % classes:  # and one more of count % classes classes picked at random
        _, one_each = data.stratified_split(train.fine[rest], 1, seed + 1, option="--calibration-images")
        extra = np.random.default_rng(seed).choice(rest[one_each], count % classes, replace=False)
        chosen = np.concatenate([chosen, extra])
    return train.images[np.sort(chosen)]


FLOAT_TOLERANCE = 1e-4  # largest |probability difference| a float32 export may show


def verify(path, fmt, precision, pixels, expected):
    """Run `path` in a fresh process with its runtime alone on `pixels`; compare with `expected` (the
    .keras model's probabilities). Returns a summary dict; a float32 export that disagrees is an error."""
    require(*RUNTIMES[fmt], f"verifying the {fmt} export")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "pixels.npy", pixels.astype(np.float32))
        # cwd: a fresh folder, so that only the installed package is imported, not files lying around here
        try:
            runtime = run_json([sys.executable, "-m", "cifar_keras.deploy.verify", fmt, str(Path(path).resolve()),
                                str(Path(tmp) / "pixels.npy"), str(Path(tmp) / "out.npy")], cwd=tmp)["runtime"]
        except Failed as e:
            raise UserError(f"{path}: {fmt} runtime failed in a fresh process: {e}") from None
        got = np.load(Path(tmp) / "out.npy")
    result = {"path": str(path), "format": fmt, "precision": precision, "runtime": runtime, "images": len(pixels),
              "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
              "max_abs_diff": float(np.abs(got - expected).max())}
    if precision == "float32" and result["max_abs_diff"] > FLOAT_TOLERANCE:
        raise UserError(f"{path}: {runtime} disagrees with the .keras model (max |probability difference| "
                        f"{result['max_abs_diff']:.2g} > {FLOAT_TOLERANCE:g})")
    return result
