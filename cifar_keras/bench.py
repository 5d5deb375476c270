"""`bench`: CNN training throughput per Keras backend and precision, side by side in one run.

Each (backend, precision) runs in its own process (the backend is fixed at import) on the
same synthetic batches through the real tf.data pipeline: a few warm-up steps (compilation),
then timed steps of `fit`, and a timed pass of the input pipeline alone.
"""

import json
import os
import subprocess
import sys

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "bfloat16")


def measure(model_name, precision, batch_size, steps, warmup):
    """Images/s of fit() steps and of the pipeline alone, in this process's backend."""
    import keras

    from cifar_keras.config import make_config
    from cifar_keras.data import Split
    from cifar_keras.runtime import resolve_precision
    from cifar_keras.train import build_compiled, pipeline_throughput, train_throughput, training_data

    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = batch_size * (steps + warmup)
    split = Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n), np.zeros(n, int))
    config = make_config(model_name, batch_size=batch_size, epochs=1)
    model = build_compiled(config, steps + warmup)
    dataset = training_data(split, config, batch_size)
    images_per_s = train_throughput(model, dataset, batch_size, steps, warmup)
    return {"backend": keras.backend.backend(), "precision": policy,
            "train_images_per_s": round(images_per_s, 1),
            "pipeline_images_per_s": round(pipeline_throughput(dataset), 1)}


def run(model_name="cnn", backends=BACKENDS, precisions=PRECISIONS, batch_size=256, steps=20, warmup=3):
    """One subprocess per combination; a failure is recorded, not fatal."""
    results = []
    for backend in backends:
        for precision in precisions:
            env = {**os.environ, "KERAS_BACKEND": backend}
            args = [sys.executable, "-m", "cifar_keras.bench", model_name, precision, str(batch_size), str(steps),
                    str(warmup)]
            print(f"bench: {backend} {precision} ...", file=sys.stderr, flush=True)
            done = subprocess.run(args, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode == 0 and lines:
                results.append(json.loads(lines[-1]))
            else:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"backend": backend, "precision": precision, "error": error[:300]})
            print(f"bench: {results[-1]}", file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    name, precision, batch, steps, warmup = sys.argv[1:6]
    print(json.dumps(measure(name, precision, int(batch), int(steps), int(warmup))))
