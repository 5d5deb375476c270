"""--precision auto on a CPU with AVX512-BF16 and no AMX: fit probes float32 and bfloat16 side by side and trains in
the faster one, records the probe, keeps its choice on resume, and saves a float32 model either way."""

import json

import keras
import numpy as np
import pytest

from cifar_keras import hardware
from cifar_keras.config import make_config
from cifar_keras.training import fit, precision

TINY = dict(epochs=2, batch_size=50, val_size=100, model_args=dict(hidden=(32, 16), dropout=0.0))
NO_AMX = {"avx2", "avx512f", "avx512_bf16"}


@pytest.fixture
def cpu_without_amx(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: NO_AMX)
    monkeypatch.setattr(hardware, "gpus", lambda: [])
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the machine's own instructions, not a stand-in's


def fake_speeds(monkeypatch, speeds):
    """train_throughput as if this CPU ran float32 and bfloat16 at `speeds` images/s; the models it is handed are
    the probe's, built under the policy of the precision being probed."""
    policies = []

    def throughput(model, dataset, batch_size, steps, warmup):
        policies.append(keras.mixed_precision.global_policy().name)
        return speeds[{"float32": "float32", "mixed_bfloat16": "bfloat16"}[policies[-1]]]

    monkeypatch.setattr(precision, "train_throughput", throughput)
    return policies


@pytest.mark.parametrize("flags, gpus, choice, probed", [
    (NO_AMX, [], "auto", True),
    (NO_AMX | {"amx_bf16"}, [], "auto", False),  # AMX: bfloat16 without asking
    ({"avx2"}, [], "auto", False),  # no bfloat16 instructions: float32
    (NO_AMX, ["GPU 0"], "auto", False),  # float16
    (NO_AMX, [], "float32", False),  # asked for
])
def test_only_auto_on_a_cpu_with_avx512_bf16_and_no_amx_is_probed(flags, gpus, choice, probed, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "gpus", lambda: gpus)
    assert precision.needs_probe(make_config("mlp", precision=choice)) is probed
    assert precision.needs_probe(make_config("mlp", precision=choice, distribute="mirrored")) is False


@pytest.mark.parametrize("limit, probed, amx_policy", [(None, True, "mixed_bfloat16"), ("ALL", True, "mixed_bfloat16"),
                                                       ("AVX2", False, "float32"), ("AVX512_CORE", False, "float32"),
                                                       ("AVX512_CORE_BF16", True, "mixed_bfloat16"),
                                                       ("AVX512_CORE_AMX", True, "mixed_bfloat16")])
def test_a_onednn_limit_without_bfloat16_leaves_float32(limit, probed, amx_policy, cpu_without_amx, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 on such a CPU stands in for an AVX2-only one: no bfloat16 to probe, or to pick with
    AMX."""
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert precision.needs_probe(make_config("mlp")) is probed
    monkeypatch.setattr(hardware, "cpu_flags", lambda: NO_AMX | {"amx_bf16"})
    assert hardware.resolve_precision("auto") == amx_policy


@pytest.mark.parametrize("speeds, policy", [({"float32": 100.0, "bfloat16": 156.0}, "mixed_bfloat16"),
                                            ({"float32": 166.0, "bfloat16": 103.0}, "float32")])
def test_fit_trains_in_the_faster_precision_and_records_the_probe(speeds, policy, cpu_without_amx, data_root,
                                                                   tmp_path, monkeypatch, capsys):
    probed = fake_speeds(monkeypatch, speeds)
    record = fit.fit(make_config("mlp", **TINY), data_dir=data_root, output_dir=tmp_path)
    assert probed == ["float32", "mixed_bfloat16"]  # each candidate timed under its own policy
    assert record["precision"] == policy
    assert record["precision_probe"]["images_per_s"] == speeds
    assert record["precision_probe"]["chosen"] == {"mixed_bfloat16": "bfloat16", "float32": "float32"}[policy]
    assert "training in" in capsys.readouterr().out
    saved = keras.saving.load_model(tmp_path / "mlp.keras")  # loads under TensorFlow, float32 as served
    assert {w.dtype for w in saved.weights} == {"float32"}
    assert saved.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).dtype == np.float32


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_a_resumed_run_keeps_the_precision_it_started_with(cpu_without_amx, data_root, tmp_path, monkeypatch):
    config = make_config("mlp", **TINY)
    fake_speeds(monkeypatch, {"float32": 100.0, "bfloat16": 156.0})
    with pytest.raises(KeyboardInterrupt):
        fit.fit(config, data_dir=data_root, output_dir=tmp_path, extra_callbacks=[Interrupt()])
    probed_again = fake_speeds(monkeypatch, {"float32": 200.0, "bfloat16": 50.0})  # another day's speeds
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    assert record["resumed"] and probed_again == [] and record["precision"] == "mixed_bfloat16"
    assert json.loads(json.dumps(record["precision_probe"]))["chosen"] == "bfloat16"
