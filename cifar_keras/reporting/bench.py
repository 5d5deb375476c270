"""`bench`: CNN training throughput per Keras backend and precision, side by side in one run.

Each (backend, precision) runs in its own process (the backend is fixed at import) on the
same synthetic batches through the real tf.data pipeline: a few warm-up steps (compilation),
then timed steps of `fit`, and a timed pass of the input pipeline alone.

`bench --inference`: a trained model's inference per deployment format and precision (Keras,
SavedModel, ONNX, LiteRT, OpenVINO; float32, int8, bfloat16), each in its own process with its
own runtime: batch-1 latency (median, p99) and large-batch throughput.

`bench --layouts 1x2,2x1`: this machine's cores used by one process or split between several
processes of one cluster (JAX's distributed runtime, as `fit --distribute multiworker`), each
process pinned to its own cores: training images/s of the whole cluster, and the network bytes
this machine sends per step (all interfaces, loopback included: on one machine, the processes'
gradient exchange).
"""

import json
import os
import sys

import numpy as np

from cifar_keras.subprocess_json import Failed, run_json

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "bfloat16")


def synthetic_split(n):
    """`n` random images and labels, the same in every process (seeded)."""
    from cifar_keras.data.cifar100 import Split

    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n), np.zeros(n, int))


# Environment variables that change how fast the backends run: thread pools (OpenMP, TensorFlow's), oneDNN
# (TensorFlow's oneDNN kernels: on by default on x86 CPUs; ONEDNN_*: oneDNN's own), XLA (e.g. its
# --xla_cpu_max_isa), PyTorch's own kernels' instruction set (ATEN_CPU_CAPABILITY). None: unset.
SPEED_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS",
                   "ONEDNN_DEFAULT_FPMATH_MODE", "ONEDNN_MAX_CPU_ISA", "XLA_FLAGS", "ATEN_CPU_CAPABILITY")


def speed_variables():
    return {name: os.environ.get(name) for name in SPEED_VARIABLES}


def thread_pools(backend):
    """(intra-op, inter-op) threads as this process's backend reports them. TensorFlow: 0 is its default
    (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS where set, else one per core); JAX has no such setting
    (None: XLA sizes its pools, see XLA_FLAGS)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads())
    if backend == "torch":
        import torch

        return torch.get_num_threads(), torch.get_num_interop_threads()
    return None, None


def settings(model, batch_size):
    """What a measurement ran with: backend, dtype policy, batch size, XLA compilation of the train step
    (Keras' jit_compile as compile resolved it), thread pools and the SPEED_VARIABLES."""
    import keras

    backend = keras.backend.backend()
    intra_op, inter_op = thread_pools(backend)
    return {"backend": backend, "precision": keras.mixed_precision.global_policy().name, "batch_size": batch_size,
            "jit_compile": bool(model.jit_compile), "intra_op_threads": intra_op, "inter_op_threads": inter_op,
            "variables": speed_variables()}


def measure(model_name, precision, batch_size, steps, warmup, overrides=None):
    """Images/s of fit() steps and of the pipeline alone, in this process's backend, and the settings used.
    `overrides`: options of the recipe to change (RunConfig fields, as `fit` flags set them), e.g. {"ema": 0.0};
    the weight average, when the recipe keeps one, is timed with the steps, as in `fit`."""
    import keras

    from cifar_keras.config import make_config
    from cifar_keras.hardware import resolve_precision
    from cifar_keras.training.callbacks import WeightAverage
    from cifar_keras.training.inputs import training_data
    from cifar_keras.training.optimizers import build_compiled
    from cifar_keras.training.throughput import pipeline_throughput, train_throughput

    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    # Timed on the run's first epoch: with progressive resizing (low_res), its smaller images.
    overrides = overrides or {}
    config = make_config(model_name, **{**overrides, "batch_size": batch_size,
                                        "epochs": 1 + overrides.get("low_res_epochs", 0)})
    model = build_compiled(config, steps + warmup)
    dataset = training_data(synthetic_split(batch_size * (steps + warmup)), config, batch_size, epochs=1)
    callbacks = [WeightAverage(config.ema)] if config.ema else []
    images_per_s = train_throughput(model, dataset, batch_size, steps, warmup, callbacks=callbacks)
    return {"backend": keras.backend.backend(), "precision": policy,
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "train_images_per_s": round(images_per_s, 1), "image_size": int(dataset.element_spec[0].shape[1]),
            "pipeline_images_per_s": round(pipeline_throughput(dataset), 1), "settings": settings(model, batch_size)}


def run(model_name="cnn", backends=BACKENDS, precisions=PRECISIONS, batch_size=256, steps=20, warmup=3,
        variants=(("recipe", {}),)):
    """One subprocess per variant (name, recipe overrides), backend and precision, side by side; a failure is
    recorded, not fatal."""
    results = []
    for variant, overrides in variants:
        for backend in backends:
            for precision in precisions:
                env = {**os.environ, "KERAS_BACKEND": backend}
                args = [sys.executable, "-m", "cifar_keras.reporting.bench", model_name, precision, str(batch_size),
                        str(steps), str(warmup), json.dumps(overrides)]
                print(f"bench: {variant} {backend} {precision} ...", file=sys.stderr, flush=True)
                try:
                    result = run_json(args, env=env)
                except Failed as e:
                    result = {"backend": backend, "precision": precision, "error": str(e)}
                results.append({"variant": variant, "overrides": overrides, **result})
                print(f"bench: {results[-1]}", file=sys.stderr, flush=True)
    return results


# --- bench --layouts: one machine's cores as one process or as a cluster ------------------------

def parse_layouts(text):
    """[(processes, cores per process), ...] from 'PxC,PxC' (e.g. '1x2,2x1'), checked against this machine's cores."""
    from cifar_keras.errors import UserError
    from cifar_keras.distributed.processes import core_shares

    layouts = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        try:
            processes, cores = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise UserError(f"--layouts: '{item}' is not PROCESSESxCORES (e.g. 1x2,2x1)") from None
        if processes < 1 or cores < 1:
            raise UserError(f"--layouts: '{item}' needs at least 1 process and 1 core each")
        try:
            core_shares(processes, cores)
        except UserError as e:
            raise UserError(f"--layouts: {e}") from None
        layouts.append((processes, cores))
    if not layouts:
        raise UserError("--layouts: give at least one layout, e.g. 1x2,2x1")
    return layouts


def network_bytes_sent():
    """Bytes this machine has sent over all its network interfaces, loopback included (Linux /proc/net/dev)."""
    with open("/proc/net/dev") as f:
        return sum(int(line.split(":", 1)[1].split()[8]) for line in f.readlines()[2:])


def measure_cluster(model_name, batch_size, steps, warmup, result_file):
    """In each process of a cluster (Keras' KERAS_DISTRIBUTION_* variables; one process alone when they say 1):
    float32 fit() steps of MODEL with `batch_size` images per process, DataParallel over every process's device.
    Process 0 writes the cluster's images/s and the machine's network bytes sent per step to `result_file`."""
    from cifar_keras.distributed.cluster import resolve_cluster
    from cifar_keras.distributed.multiworker import join_cluster
    from cifar_keras.distributed.team import Team

    processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1"))
    team = join_cluster(resolve_cluster()) if processes > 1 else Team()
    import jax
    import keras

    from cifar_keras import hardware
    from cifar_keras.config import make_config
    from cifar_keras.training.inputs import training_data
    from cifar_keras.training.optimizers import build_compiled
    from cifar_keras.training.throughput import StepTimer, train_throughput

    class NetworkTimer(StepTimer):
        """A StepTimer that also reads the machine's bytes sent where the timed steps start and end."""

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if batch + 1 == self.skip:
                self.sent_start = network_bytes_sent()
            self.sent_end = network_bytes_sent()

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    with hardware.data_parallel("multiworker" if processes > 1 else "none") as (scope, replicas):
        global_batch = batch_size * replicas
        config = make_config(model_name, batch_size=batch_size, epochs=1)
        with scope():
            model = build_compiled(config, steps + warmup)
        timer = NetworkTimer(warmup)
        dataset = training_data(synthetic_split(global_batch * (steps + warmup)), config, global_batch)
        images_per_s = train_throughput(model, dataset, global_batch, steps, warmup, timer)
    result = {"processes": processes, "devices": replicas, "global_batch_size": global_batch, "precision": "float32",
              "train_images_per_s": round(images_per_s, 1), "step_ms": round(1000 * global_batch / images_per_s, 1),
              "network_bytes_sent_per_step": round((timer.sent_end - timer.sent_start) / steps),
              "parameters": int(model.count_params()),
              "trainable_bytes": int(sum(v.numpy().nbytes for v in model.trainable_variables)), "jax": jax.__version__}
    if team.primary:
        with open(result_file, "w") as f:
            json.dump(result, f)
    team.leave()


def run_processes_bench(model_name="cnn", layouts=((1, 2), (2, 1)), batch_size=256, steps=10, warmup=3):
    """For each (processes, cores) layout: that many processes of one cluster on a free loopback port, as `launch
    --processes P --cores-per-process C` starts them (each pinned to its own cores), measuring with
    measure_cluster. Returns one result per layout (a failure is recorded, not fatal)."""
    import tempfile

    from cifar_keras.distributed.processes import run_processes

    results = []
    for processes, cores in layouts:
        print(f"bench: {processes} process(es) x {cores} core(s) ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            result_file = os.path.join(scratch, "result.json")
            command = [sys.executable, "-m", "cifar_keras.reporting.bench", "--cluster", model_name, str(batch_size),
                       str(steps), str(warmup), result_file]
            env = {**os.environ, "KERAS_BACKEND": "jax"}
            env.pop("XLA_FLAGS", None)  # one CPU device per process
            code = run_processes(command, processes, env, cores_per_process=cores)
            layout = {"layout": f"{processes}x{cores}", "cores_per_process": cores}
            if code == 0 and os.path.exists(result_file):
                with open(result_file) as f:
                    results.append({**layout, **json.load(f)})
            else:
                results.append({**layout, "processes": processes, "error": f"exit code {code}"})
        print(f"bench: {results[-1]}", file=sys.stderr, flush=True)
    return results


def processes_table(record):
    """Markdown table of a bench --layouts record."""
    rows = ["| processes x cores | global batch | training images/s | step | network bytes sent per step |",
            "|---|---:|---:|---:|---:|"]
    for r in record["results"]:
        if "error" in r:
            rows.append(f"| {r['layout']} | — | failed: {r['error']} | — | — |")
        else:
            rows.append(f"| {r['layout']} | {r['global_batch_size']} | {r['train_images_per_s']:.1f} | "
                        f"{r['step_ms']:.0f} ms | {r['network_bytes_sent_per_step'] / 1e6:.1f} MB |")
    return "\n".join(rows) + "\n"


# --- bench --inference -----------------------------------------------------------------------------

INFERENCE_FORMATS = ("keras", "saved_model", "onnx", "litert", "openvino")
INFERENCE_PRECISIONS = ("float32", "int8", "bfloat16")
INT8_CPU_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8"}  # what int8 kernels use, beside hardware.REPORTED_CPU_FEATURES


def inference_rows(formats, precisions, bf16_available):
    """(format, precision) pairs to time: float32 everywhere, int8 where an int8 export exists (litert,
    openvino), bfloat16 where the runtime computes a float32 model in it (openvino, on CPUs that can)."""
    from cifar_keras.deploy.export import INT8_FORMATS

    rows = []
    for fmt in formats:
        for precision in precisions:
            if (precision == "float32" or (precision == "int8" and fmt in INT8_FORMATS)
                    or (precision == "bfloat16" and fmt == "openvino" and bf16_available)):
                rows.append((fmt, precision))
    return rows


def size_bytes(path):
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def time_inference(model_path, precision, batch_size, steps, warmup, latency_runs, threads=None):
    """Batch-1 latency (median and p99 over `latency_runs` calls) and batch-`batch_size` throughput (over
    `steps` calls) of one model in its runtime, in this process, after `warmup` untimed calls of each size."""
    import time

    from cifar_keras.deploy import runtimes

    predictor = runtimes.load(model_path, "bfloat16" if precision == "bfloat16" else None, threads)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (batch_size, 32, 32, 3)).astype(np.float32)
    one = batch[:1]
    for _ in range(warmup):
        predictor(one)
    latencies = []
    for _ in range(latency_runs):
        start = time.perf_counter()
        predictor(one)
        latencies.append(time.perf_counter() - start)
    for _ in range(warmup):
        predictor(batch)
    start = time.perf_counter()
    for _ in range(steps):
        predictor(batch)
    elapsed = time.perf_counter() - start
    return {"format": predictor.format, "precision": predictor.precision, "runtime": predictor.runtime,
            "latency_ms_median": round(1000 * float(np.median(latencies)), 3),
            "latency_ms_p99": round(1000 * float(np.percentile(latencies, 99)), 3),
            "throughput_images_per_s": round(batch_size * steps / elapsed, 1), "variables": speed_variables()}


def check_inference_runtimes(formats, int8):
    """One-line UserError (which extra to install) for the first runtime or converter that is missing."""
    from cifar_keras.deploy.runtimes import RUNTIMES, require

    needs = {"onnx": [("tf2onnx", "tf2onnx")], "openvino": [("nncf", "nncf")] if int8 else []}
    for fmt in formats:
        for module, package in [RUNTIMES[fmt], *needs.get(fmt, [])]:
            require(module, package, f"bench --inference of {fmt}")


def run_inference(model_file, formats=INFERENCE_FORMATS, precisions=INFERENCE_PRECISIONS, batch_size=256, steps=20,
                  warmup=3, latency_runs=200, calibration=None, threads=None, workdir=None, views=None):
    """Export `model_file` to every format in `formats` (int8 too, calibrated on `calibration` images, when
    `precisions` has int8) into `workdir`, then time each (format, precision) in its own process, one after
    the other: only that runtime is loaded and nothing else competes for the CPU. With `views` (view counts), the
    same for the net averaged over each view count, as `export --views` ships it. Failures are recorded."""
    import tempfile
    from pathlib import Path

    from cifar_keras import models
    from cifar_keras.deploy import runtimes
    from cifar_keras.deploy.export import INT8_FORMATS, artifacts, export_model, views_of, with_views

    int8 = "int8" in precisions and any(fmt in INT8_FORMATS for fmt in formats)
    check_inference_runtimes(formats, int8)
    rows = inference_rows(formats, precisions, "bfloat16" in precisions and "openvino" in formats
                          and runtimes.openvino_bf16_available())
    saved = models.load_keras_model(model_file)
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for count in views or [None]:
            model = with_views(saved, count)
            shipped = views_of(model)
            folder = Path(tmp) / f"views_{shipped}"
            folder.mkdir()
            keras_file = Path(model_file) if count is None else folder / "model.keras"
            if count is not None:
                model.save(keras_file)
            paths = {("keras", "float32"): keras_file}
            for fmt in formats:
                if fmt == "keras":
                    continue
                print(f"bench: exporting {fmt} ({shipped} view{'s' if shipped > 1 else ''}) ...", file=sys.stderr,
                      flush=True)
                target = export_model(model, folder, fmt, 1, fmt, calibration if int8 and fmt in INT8_FORMATS else None)
                for path, precision in artifacts(target, fmt):
                    paths[(fmt, precision)] = path
                if fmt == "openvino":
                    paths[("openvino", "bfloat16")] = paths[("openvino", "float32")]
            for fmt, precision in rows:
                results.append(time_row(paths[(fmt, precision)], fmt, precision, shipped, batch_size, steps, warmup,
                                        latency_runs, threads))
    return results


def time_row(path, fmt, precision, views, batch_size, steps, warmup, latency_runs, threads):
    """One row of `bench --inference`: the model at `path` timed in a process of its own."""
    args = [sys.executable, "-m", "cifar_keras.reporting.bench", "--inference", str(path), precision,
            str(batch_size), str(steps), str(warmup), str(latency_runs), str(threads or 0)]
    print(f"bench: {fmt} {precision} ({views} view{'s' if views > 1 else ''}) ...", file=sys.stderr, flush=True)
    try:
        result = run_json(args)
    except Failed as e:
        result = {"format": fmt, "precision": precision, "error": str(e)}
    result["views"] = views
    result["size_mb"] = round(size_bytes(path) / 1e6, 2)
    result["threads"] = threads or ("os.cpu_count()" if fmt == "litert" else "runtime default")
    print(f"bench: {result}", file=sys.stderr, flush=True)
    return result


def inference_table(record):
    """Markdown table of a `bench --inference` record, with a sentence saying what and where."""
    hardware = record["hardware"]
    lines = [f"Inference of `{record['model_file']}` on {hardware['cpu']} ({hardware['cores']} cores; CPU features: "
             f"{', '.join(hardware['cpu_features']) or 'none reported'}), each format in its own process, measured "
             f"side by side by `{record['command']}`: batch-1 latency over {record['latency_runs']} calls, batch-"
             f"{record['batch_size']} throughput over {record['steps']} calls, after {record['warmup']} warm-up calls "
             "of each; int8 calibrated on training images.", "",
             f"| Views | Format | Runtime | Precision | Size (MB) | Batch-1 latency median (ms) | p99 (ms) | "
             f"Batch-{record['batch_size']} images/s |", "|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        views = r.get("views", "as saved")  # records before --views
        if "error" in r:
            lines.append(f"| {views} | {r['format']} | | {r['precision']} | {r['size_mb']} | failed: {r['error']} | | |")
        else:
            lines.append(f"| {views} | {r['format']} | {r['runtime']} | {r['precision']} | {r['size_mb']} | "
                         f"{r['latency_ms_median']:.2f} | {r['latency_ms_p99']:.2f} | "
                         f"{r['throughput_images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1] == "--cluster":
        from cifar_keras.distributed import multiworker
        from cifar_keras.errors import UserError

        name, batch, steps, warmup, result_file = sys.argv[2:7]
        try:
            measure_cluster(name, int(batch), int(steps), int(warmup), result_file)
        except BaseException as e:  # one line, and out at once: not at JAX's shutdown barrier, waiting for the others
            message = multiworker.explain(e) or (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(multiworker.abandon(2 if isinstance(e, UserError) else 1)) from None
    elif sys.argv[1] == "--inference":
        path, precision, batch, steps, warmup, latency_runs, threads = sys.argv[2:9]
        print(json.dumps(time_inference(path, precision, int(batch), int(steps), int(warmup), int(latency_runs),
                                        int(threads) or None)))
    else:
        name, precision, batch, steps, warmup, overrides = sys.argv[1:7]
        print(json.dumps(measure(name, precision, int(batch), int(steps), int(warmup), json.loads(overrides))))
