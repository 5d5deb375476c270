"""The one run-record writer: JSON files that every reported number comes from."""

import csv
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from cifar_keras.errors import UserError


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
    """Hardware and software a result was produced on."""
    import keras
    import numpy

    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": numpy.__version__}
    for name in ("tensorflow", "jax", "torch", "keras_tuner"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {
        "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpus": gpus(),
                     "cpu_features": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})},
        "backend": keras.backend.backend(),
        "versions": versions,
    }


def write(path, record):
    """Write a run record (with a timestamp) as indented JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def read_log(path):
    """The per-epoch rows of a fit's CSV log (Keras' CSVLogger), as floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: run record not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
