"""--precision auto where the CPU's features do not say whether bfloat16 pays: a short side-by-side probe.

With AVX512-BF16 but no AMX, TensorFlow's mixed bfloat16 trains the CNN 1.56x faster than float32 on an AMD EPYC
(saved_models/bench_epyc_bf16.json) and 0.62x as fast on an Intel Xeon (saved_models/bench_no_amx.json); the
recipe's accuracy is the same in both (docs/recipe-study.md, "bfloat16"). So on such a CPU `fit` times a few
training steps of each precision on a throw-away model and trains in the faster one. Elsewhere the features decide
(hardware.resolve_precision: float16 on GPUs, bfloat16 with AMX, else float32) and nothing is probed. A resumed
run keeps the precision it started with.
"""

import json

from cifar_keras import hardware
from cifar_keras.training.inputs import training_data
from cifar_keras.training.optimizers import build_compiled
from cifar_keras.training.throughput import train_throughput

CANDIDATES = ("float32", "bfloat16")  # --precision values the probe compares
PROBE_STEPS, PROBE_WARMUP = 6, 2  # timed steps and untimed warm-up steps (compilation) of each


def needs_probe(config):
    """Whether `config` leaves the precision to a probe: --precision auto, one device, a CPU with AVX512-BF16
    and no AMX, whose bfloat16 instructions ONEDNN_MAX_CPU_ISA leaves usable (a cluster's processes would have to
    agree on one choice: they keep float32)."""
    flags = hardware.cpu_flags()
    return (config.precision == "auto" and config.distribute == "none" and not hardware.gpus()
            and "avx512_bf16" in flags and "amx_bf16" not in flags and hardware.onednn_allows_bf16())


def measure(config, train_split, batch_size, learning_rate):
    """{"images_per_s": {precision: training images/s}, "chosen": the faster precision}, each timed on a
    throw-away model of `config` over the run's own training batches."""
    speeds = {}
    for precision in CANDIDATES:
        with hardware.precision_policy(precision):
            probe = build_compiled(config, len(train_split) // batch_size, learning_rate)
            batches = training_data(train_split, config, batch_size, epochs=1)
            speeds[precision] = round(train_throughput(probe, batches, batch_size, PROBE_STEPS, PROBE_WARMUP), 1)
    return {"images_per_s": speeds, "chosen": max(CANDIDATES, key=lambda p: speeds[p]), "steps": PROBE_STEPS}


def choose(config, paths, train_split, batch_size, learning_rate, first_epoch):
    """(the --precision value the run trains in, the probe's result or None): `config.precision`, or, where
    needs_probe, the probe's choice, measured once per run (saved in the run's work folder for a resume)."""
    if not needs_probe(config):
        return config.precision, None
    saved = paths["work"] / "precision.json"
    if first_epoch and saved.exists():
        probe = json.loads(saved.read_text())
    else:
        probe = measure(config, train_split, batch_size, learning_rate)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(probe))
    speeds = probe["images_per_s"]
    timed = " vs ".join(f"{p} {s:g}" for p, s in speeds.items())
    print(f"fit: --precision auto on a CPU with AVX512-BF16 and no AMX: {timed} "
          f"training images/s over {probe['steps']} steps: training in {probe['chosen']}", flush=True)
    return probe["chosen"], probe
