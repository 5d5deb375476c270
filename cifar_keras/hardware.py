"""What depends on the machine: CPU features and GPUs, the precision policy, data parallelism.

Each setting that changes global state (Keras' dtype policy, JAX's distribution) is a
context manager that restores what it changed, even when training fails.
"""

import contextlib
import os
import platform
import sys
import tempfile
from pathlib import Path

import cifar_keras

from cifar_keras.errors import UserError

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
REPORTED_CPU_FEATURES = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
NEEDS_JAX = ("--distribute multiworker runs on JAX's distributed runtime: set KERAS_BACKEND=jax (TensorFlow's "
             "MultiWorkerMirroredStrategy fails inside Keras 3's fit: keras-team/keras#20585)")


def import_tensorflow_quietly():
    """Import TensorFlow and probe its devices with the C++ start-up lines hidden (oneDNN notes, CUDA probing).

    TensorFlow 2.21 writes them through absl before its logging is initialised, so
    TF_CPP_MIN_LOG_LEVEL cannot hide them: standard error is parked in a file meanwhile
    and shown only if the import fails. A user who asks for TensorFlow's info or warnings
    (TF_CPP_MIN_LOG_LEVEL=0 or 1) sees everything; 2 or 3, the usual way to silence it, is as quiet as unset.
    """
    if "tensorflow" in sys.modules or (cifar_keras.USER_TF_LOG_LEVEL or "").strip() in ("0", "1"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as parked:
        os.dup2(parked.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        except BaseException:
            os.dup2(saved, 2)
            parked.seek(0)
            sys.stderr.write(parked.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _cpuinfo(key):
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags():
    return set((_cpuinfo("flags") or "").split())


def gpus():
    """Names of the accelerators the current Keras backend sees."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                    for d in tf.config.list_physical_devices("GPU")]
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver must not stop a finished run from being recorded
        pass
    return []


def environment():
    """Hardware and software a result was produced on (part of every run record)."""
    import keras
    import numpy

    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": numpy.__version__}
    for name in ("tensorflow", "jax", "torch", "keras_tuner"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    hardware = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpus": gpus(),
                "cpu_features": sorted(cpu_flags() & REPORTED_CPU_FEATURES)}
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # oneDNN held to fewer instructions than the CPU has (a stand-in)
        hardware["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    return {
        "hardware": hardware,
        "backend": keras.backend.backend(),
        "versions": versions,
    }


def onednn_allows_bf16():
    """Whether ONEDNN_MAX_CPU_ISA (which TensorFlow's, PyTorch's and OpenVINO's oneDNN obey) leaves bfloat16
    instructions usable: unset, ALL, or a limit that names BF16 or AMX. A limit such as AVX2 on an AVX512-BF16 or
    AMX CPU (a stand-in for an AVX2-only CPU) does not."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return not limit or limit == "ALL" or "BF16" in limit or "AMX" in limit


def resolve_precision(choice="auto"):
    """Keras dtype policy for `choice`; auto: float16 on GPUs, bfloat16 on CPUs with AMX, else float32 (where
    `fit` may still choose bfloat16 by a probe: training/precision.py).

    AVX512-BF16 alone is not enough: on such a CPU without AMX, TensorFlow's bfloat16
    matmuls and convolutions run at about half the float32 rate and the CNN trains no
    faster (saved_models/bench_no_amx.json), while AMX makes it about 4x faster (bench.json).
    """
    if choice != "auto":
        return POLICIES[choice]
    if gpus():
        return "mixed_float16"
    if "amx_bf16" in cpu_flags() and onednn_allows_bf16():
        return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def precision_policy(choice):
    """Keras' dtype policy for `choice` inside the block (yields its name), then the previous one again."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolve_precision(choice))
    try:
        yield keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def data_parallel(kind):
    """Yields (scope, replicas) for synchronous data-parallel training over this machine's devices.

    none: a no-op scope, 1 replica. mirrored: on TensorFlow, tf.distribute.MirroredStrategy
    over the GPUs (else the logical CPUs), whose scope the model must be built and fitted in;
    on JAX, keras.distribution.DataParallel over all devices, set for the block and unset after.
    multiworker (JAX only): the same DataParallel over the devices of every process of the cluster
    this process joined (multiworker.join); Keras gives each process its share of every batch.
    """
    import keras

    if kind == "none":
        yield contextlib.nullcontext, 1
        return
    backend = keras.backend.backend()
    if kind == "multiworker":
        import jax

        if backend != "jax":
            raise UserError(NEEDS_JAX)
        if not jax.distributed.is_initialized():
            raise UserError("--distribute multiworker: this process has not joined a cluster (multiworker.join)")
    if backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        yield strategy.scope, strategy.num_replicas_in_sync
    elif backend == "jax":
        devices = keras.distribution.list_devices()
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield contextlib.nullcontext, len(devices)
        finally:
            keras.distribution.set_distribution(previous)
    else:
        raise UserError(f"--distribute {kind} needs KERAS_BACKEND=tensorflow or jax, not {backend}")
