"""`export`: a trained .keras model in a deployment format, in the layout its servers expect.

Every format takes `pixels`, a float32 batch (None, 32, 32, 3) of raw RGB values in 0-255 (no
normalisation needed), and returns `probabilities` (None, 100); class i is line i of labels.txt.

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

import json
import logging
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import keras
import numpy as np

from cifar_keras.data.classes import FINE_NAMES
from cifar_keras.errors import UserError
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


def write_labels(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(FINE_NAMES) + "\n")


def write_saved_model(model, target, calibration=None):
    write_archive(model, serving_fn(model), target)
    write_labels(target / LABELS_FILE)


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
    write_labels(target / "labels.txt")


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
    write_labels(target / "labels.txt")


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
    write_labels(target / "labels.txt")


WRITERS = {"saved_model": write_saved_model, "onnx": write_onnx, "litert": write_litert, "openvino": write_openvino}


def artifacts(target, fmt):
    """[(path, precision)] of the models an export wrote into `target`."""
    if fmt == "saved_model":
        return [(Path(target), "float32")]
    found = [(Path(target) / MODEL_FILES[fmt], "float32")]
    if fmt in INT8_FILES and (Path(target) / INT8_FILES[fmt]).is_file():
        found.append((Path(target) / INT8_FILES[fmt], "int8"))
    return found


def check_format(fmt, int8=False):
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise UserError(f"--int8 is available for {' and '.join(INT8_FORMATS)}, not {fmt}")


def export_model(model, root, name, version=None, fmt="saved_model", calibration=None):
    """Write root/name/version/ in `fmt`'s layout (int8 models too when `calibration` images are given,
    for litert and openvino); return that folder. A failed export leaves no version folder behind."""
    check_format(fmt, calibration is not None)
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
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train.fine))
    per_class = -(-count // 100)  # then drop the surplus at random
    chosen = np.array([i for c in range(100) for i in order[train.fine[order] == c][:per_class]])
    if len(chosen) > count:
        chosen = rng.choice(chosen, count, replace=False)
    return train.images[np.sort(chosen)]


# A fresh interpreter per format that imports numpy and that format's runtime only: argv = model, pixels.npy,
# out.npy. It fails if cifar_keras (or, for the non-TensorFlow runtimes, TensorFlow) got imported.
VERIFY_SCRIPTS = {
    "saved_model": """
        import tensorflow as tf
        serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
        probabilities = serve(pixels=tf.constant(pixels))["probabilities"].numpy()
        runtime = "tensorflow " + tf.__version__
    """,
    "onnx": """
        import onnxruntime as ort
        session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        probabilities = session.run(["probabilities"], {"pixels": pixels})[0]
        runtime = "onnxruntime " + ort.__version__
    """,
    "litert": """
        from importlib.metadata import version
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=sys.argv[1]).get_signature_runner("serving_default")
        probabilities = runner(pixels=pixels)["probabilities"]
        runtime = "ai-edge-litert " + version("ai-edge-litert")
    """,
    "openvino": """
        from importlib.metadata import version
        import openvino as ov
        # f32: OpenVINO's CPU plugin would otherwise compute in bfloat16 on CPUs that have it.
        compiled = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        probabilities = compiled(pixels)["probabilities"]
        runtime = "openvino " + version("openvino")
    """,
}
VERIFY_FOOTER = """
    assert "cifar_keras" not in sys.modules, "cifar_keras was imported"
    assert RUNTIME == "saved_model" or "tensorflow" not in sys.modules, "tensorflow was imported"
    np.save(sys.argv[3], probabilities)
    print(json.dumps({"runtime": runtime}))
"""
FLOAT_TOLERANCE = 1e-4  # largest |probability difference| a float32 export may show


def verify_script(fmt):
    body = textwrap.dedent(VERIFY_SCRIPTS[fmt]) + textwrap.dedent(VERIFY_FOOTER)
    return f"import json, sys\nimport numpy as np\nRUNTIME = {fmt!r}\npixels = np.load(sys.argv[2])\n{body}"


def verify(path, fmt, precision, pixels, expected):
    """Run `path` in a fresh process with its runtime alone on `pixels`; compare with `expected` (the
    .keras model's probabilities). Returns a summary dict; a float32 export that disagrees is an error."""
    require(*RUNTIMES[fmt], f"verifying the {fmt} export")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "pixels.npy", pixels.astype(np.float32))
        # cwd: a fresh folder, so that nothing of this repository can be imported by accident
        done = subprocess.run([sys.executable, "-c", verify_script(fmt), str(Path(path).resolve()),
                               str(Path(tmp) / "pixels.npy"), str(Path(tmp) / "out.npy")],
                              capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"{path}: {fmt} runtime failed in a fresh process: {last[:300]}")
        got = np.load(Path(tmp) / "out.npy")
    runtime = json.loads(done.stdout.strip().splitlines()[-1])["runtime"]
    result = {"path": str(path), "format": fmt, "precision": precision, "runtime": runtime, "images": len(pixels),
              "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
              "max_abs_diff": float(np.abs(got - expected).max())}
    if precision == "float32" and result["max_abs_diff"] > FLOAT_TOLERANCE:
        raise UserError(f"{path}: {runtime} disagrees with the .keras model (max |probability difference| "
                        f"{result['max_abs_diff']:.2g} > {FLOAT_TOLERANCE:g})")
    return result
