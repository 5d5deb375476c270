"""A trained or exported model in its own runtime: one loader per format, each giving a function
pixels (N, 32, 32, 3) float32 RGB 0-255 -> probabilities (N, 100).

The format is read from the path: a .keras file (Keras), a folder holding saved_model.pb
(TensorFlow), model.onnx (onnxruntime), model.tflite (ai-edge-litert's interpreter) or model.xml
(OpenVINO), or one of those files itself (e.g. model_int8.tflite). Only the runtime a format needs
is imported, and a missing one is a one-line error naming the extra that brings it.
"""

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from cifar_keras.data.classes import FINE_NAMES
from cifar_keras.errors import UserError

DEPLOY_EXTRA = "pip install -e '.[deploy]'"
# format -> (module to import, pip package)
RUNTIMES = {"keras": ("keras", "keras"), "saved_model": ("tensorflow", "tensorflow"),
            "onnx": ("onnxruntime", "onnxruntime"), "litert": ("ai_edge_litert", "ai-edge-litert"),
            "openvino": ("openvino", "openvino")}
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
INT8_FILES = {"litert": "model_int8.tflite", "openvino": "model_int8.xml"}
SUFFIXES = {".keras": "keras", ".onnx": "onnx", ".tflite": "litert", ".xml": "openvino"}
PRECISIONS = ("float32", "int8", "bfloat16")


def require(module, package, purpose):
    """`import module`, or a one-line UserError: '<purpose> needs <package>: pip install -e '.[deploy]''."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs {package}: {DEPLOY_EXTRA}") from None


def runtime_version(fmt):
    module, package = RUNTIMES[fmt]
    try:
        version = f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package
    if fmt == "keras":
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        try:
            version += f" ({backend} {metadata.version(backend)})"
        except metadata.PackageNotFoundError:
            pass
    return version


def detect(path):
    """(format, model path, precision of its weights) of a .keras file, an export folder or an exported file."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model", path, "float32"
        for fmt, name in MODEL_FILES.items():
            if (path / name).is_file():
                return fmt, path / name, "float32"
        raise UserError(f"{path}: not an exported model folder (no saved_model.pb, model.onnx, model.tflite "
                        "or model.xml)")
    if not path.exists():
        raise UserError(f"{path}: model file not found")
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: expected a .keras, .onnx, .tflite or .xml model file, or an export folder")
    fmt = SUFFIXES[path.suffix]
    return fmt, path, "int8" if path.name == INT8_FILES.get(fmt) else "float32"


def class_names(fmt, path):
    """labels.txt of an export (assets.extra/labels.txt for a SavedModel), else the built-in names."""
    path = Path(path)
    labels = path / "assets.extra" / "labels.txt" if fmt == "saved_model" else path.parent / "labels.txt"
    if fmt != "keras" and labels.is_file():
        return labels.read_text().splitlines()
    return list(FINE_NAMES)


@dataclass
class Predictor:
    """`predict(pixels) -> probabilities` of one model in one runtime."""

    format: str
    precision: str
    path: Path
    runtime: str
    predict: callable = field(repr=False)
    names: list = field(default_factory=lambda: list(FINE_NAMES), repr=False)
    threads: int = None  # None: the runtime's default

    def __call__(self, pixels):
        return np.asarray(self.predict(np.ascontiguousarray(pixels, dtype=np.float32)))


def _keras(path, precision, threads):
    from cifar_keras.models import load_keras_model

    model = load_keras_model(path)
    return lambda pixels: model.predict_on_batch(pixels)


def _saved_model(path, precision, threads):
    import tensorflow as tf

    try:
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (KeyError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load SavedModel ({type(e).__name__})") from None
    return lambda pixels: serve(pixels=tf.constant(pixels))["probabilities"].numpy()


def _onnx(path, precision, threads):
    ort = require("onnxruntime", "onnxruntime", f"loading {path.name}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one thread per physical core)
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise UserError(f"{path}: cannot load ONNX model ({type(e).__name__})") from None
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})[0]


def _litert(path, precision, threads):
    interpreter_module = require("ai_edge_litert.interpreter", "ai-edge-litert", f"loading {path.name}")
    try:
        interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
    except ValueError as e:
        raise UserError(f"{path}: cannot load LiteRT model ({str(e).splitlines()[0][:200]})") from None
    runner = interpreter.get_signature_runner("serving_default")
    return lambda pixels: runner(pixels=pixels)["probabilities"]


def _openvino(path, precision, threads):
    ov = require("openvino", "openvino", f"loading {path.name}")
    core = ov.Core()
    # OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it: ask for what was meant.
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32"}
    if precision == "bfloat16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise UserError("OpenVINO bfloat16 needs a CPU with bfloat16 support (AVX512-BF16 or AMX)")
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(str(path), "CPU", config)
    except RuntimeError as e:
        raise UserError(f"{path}: cannot load OpenVINO model ({str(e).splitlines()[0][:200]})") from None
    return lambda pixels: compiled(pixels)[0]


LOADERS = {"keras": _keras, "saved_model": _saved_model, "onnx": _onnx, "litert": _litert, "openvino": _openvino}


def openvino_bf16_available():
    """Whether OpenVINO can run bfloat16 here: the CPU says so, and ONEDNN_MAX_CPU_ISA (which OpenVINO's oneDNN
    obeys too) does not limit it to instructions without bfloat16, e.g. AVX2 on an AVX512-BF16 CPU."""
    from cifar_keras.hardware import onednn_allows_bf16

    if not onednn_allows_bf16():
        return False
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def load(model_path, precision=None, threads=None):
    """The Predictor of a .keras file or an export. precision: None (the model's own: float32, or int8 for
    model_int8.* files), or "bfloat16" to run a float32 OpenVINO model in bfloat16."""
    fmt, path, weights = detect(model_path)
    if precision not in (None, weights) and not (fmt == "openvino" and weights == "float32"
                                                  and precision == "bfloat16"):
        raise UserError(f"{path}: cannot run a {weights} {fmt} model in {precision}")
    precision = precision or weights
    return Predictor(fmt, precision, path, runtime_version(fmt), LOADERS[fmt](path, precision, threads),
                     class_names(fmt, path), threads)
