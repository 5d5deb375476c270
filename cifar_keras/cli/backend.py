"""`fit --backend auto|tensorflow|jax|torch`: the Keras backend a run trains on, chosen before it starts.

Keras fixes its backend when it is first imported, so a run on another backend than this process's goes to a
fresh process (`python -m cifar_keras fit ...` with KERAS_BACKEND set): its output, exit status and Ctrl-C are
the run's. `auto` first times a few training steps of MODEL on each installed backend, one process each, side by
side (what `bench` measures), and trains on the fastest. The saved .keras model is the same file on every backend
(it loads under TensorFlow, which `export` uses).
"""

import importlib.util
import json
import os
import subprocess
import sys

from cifar_keras.errors import UserError

CHOICES = ("auto", "tensorflow", "jax", "torch")
PROBE_STEPS, PROBE_WARMUP = 4, 2  # timed and untimed (compilation) training steps per backend
PROBE_VARIABLE = "CIFAR_KERAS_BACKEND_PROBE"  # the probe's result, handed to the run's own process for its record


def installed():
    """The backends whose framework is installed, in bench's order."""
    from cifar_keras.reporting.bench import BACKENDS

    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def without_backend_flag(argv):
    """`argv` without --backend and its value (both spellings)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--backend":
            skip = True
        elif not arg.startswith("--backend="):
            out.append(arg)
    return out


def probe(model, batch_size, model_args, bench_run=None):
    """{"images_per_s": {backend: training images/s}, "chosen": the fastest, "steps": ...}: MODEL's recipe (with
    `model_args` and `batch_size` where given) timed on each installed backend in a process of its own."""
    from cifar_keras.reporting import bench

    overrides = {"model_args": model_args} if model_args else {}
    results = (bench_run or bench.run)(model, installed(), ["auto"], batch_size, PROBE_STEPS, PROBE_WARMUP,
                                       (("recipe", overrides),))
    speeds = {r["backend"]: r["train_images_per_s"] for r in results if "error" not in r}
    if not speeds:
        raise UserError(f"--backend auto: no backend could train {model} here: {results[0].get('error', '?')}")
    return {"images_per_s": speeds, "chosen": max(speeds, key=speeds.get), "steps": PROBE_STEPS}


def run_elsewhere(args, argv):
    """None when this process trains the run itself; else the exit status of the process that trained it on
    the backend `args.backend` asks for (auto: the fastest in a probe)."""
    import keras

    current = keras.backend.backend()
    if args.backend is None or args.backend == current:
        return None
    found = None
    if args.backend == "auto":
        batch = args.batch_size or 256
        found = probe(args.model, batch, args.model_args)
        speeds = ", ".join(f"{b} {s:g}" for b, s in found["images_per_s"].items())
        print(f"fit: --backend auto: {speeds} training images/s over {found['steps']} steps of batch {batch}: "
              f"training on {found['chosen']}", flush=True)
        if found["chosen"] == current:
            os.environ[PROBE_VARIABLE] = json.dumps(found)
            return None
    backend = found["chosen"] if found else args.backend
    if importlib.util.find_spec(backend) is None:
        raise UserError(f"--backend {backend}: {backend} is not installed (pip install {backend})")
    env = {**os.environ, "KERAS_BACKEND": backend}
    if found:
        env[PROBE_VARIABLE] = json.dumps(found)
    return subprocess.call([sys.executable, "-m", "cifar_keras", *without_backend_flag(argv)], env=env)


def probe_of_this_run():
    """The backend probe that chose this process's backend, for the run record, or None."""
    text = os.environ.pop(PROBE_VARIABLE, None)
    return json.loads(text) if text else None
