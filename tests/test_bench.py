import json
import os

import pytest

from cifar_keras import cli
from cifar_keras.reporting import tables


def test_bench_measures_each_combination_and_records_it(tmp_path, capsys, monkeypatch):
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "ONEDNN_DEFAULT_FPMATH_MODE", "ONEDNN_MAX_CPU_ISA",
                 "XLA_FLAGS", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    out = tmp_path / "bench.json"
    argv = ["bench", "mlp", "--backends", "tensorflow", "--precisions", "float32,bfloat16", "--batch-size", "32",
            "--steps", "2", "--warmup", "1", "--output", str(out)]
    assert cli.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "bench" and record["command"].startswith("python -m cifar_keras bench mlp")
    results = record["results"]
    assert [(r["backend"], r["precision"]) for r in results] == [("tensorflow", "float32"),
                                                                 ("tensorflow", "mixed_bfloat16")]
    assert all(r["train_images_per_s"] > 0 and r["pipeline_images_per_s"] > 0 for r in results)
    import tensorflow as tf

    # Each result states what it ran with. Keras compiles TensorFlow's train step with XLA only where TensorFlow
    # sees a GPU; TensorFlow reports 0 threads per pool (its default) unless the API set them.
    for result, policy in zip(results, ("float32", "mixed_bfloat16")):
        assert result["settings"] == {
            "backend": "tensorflow", "precision": policy, "batch_size": 32,
            "jit_compile": bool(tf.config.list_physical_devices("GPU")), "intra_op_threads": 0, "inter_op_threads": 0,
            "variables": {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": None, "TF_NUM_INTEROP_THREADS": None,
                          "TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_DEFAULT_FPMATH_MODE": None, "ONEDNN_MAX_CPU_ISA": None,
                          "XLA_FLAGS": None, "ATEN_CPU_CAPABILITY": None}}
    table = tables.bench_table(out)
    assert table.count("\n| tensorflow |") == 2 and "mixed_bfloat16" in table


def test_bench_times_variants_of_the_recipe_side_by_side(tmp_path, capsys):
    out = tmp_path / "bench_variants.json"
    argv = ["bench", "mlp", "--backends", "tensorflow", "--precisions", "float32", "--batch-size", "16", "--steps", "1",
            "--warmup", "1", "--variant", 'tiny={"model_args": {"hidden": [8]}, "noise": 0.05, "jit_compile": "on"}',
            "--output", str(out)]
    assert cli.main(argv) == 0
    recipe, tiny = json.loads(out.read_text())["results"]
    assert (recipe["variant"], recipe["overrides"], tiny["variant"]) == ("recipe", {}, "tiny")
    assert tiny["overrides"] == {"model_args": {"hidden": [8]}, "noise": 0.05, "jit_compile": "on"}
    import tensorflow as tf

    # XLA as asked (--jit-compile on), where Keras' "auto" compiles TensorFlow's step only with a GPU.
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert (recipe["settings"]["jit_compile"], tiny["settings"]["jit_compile"]) == (gpu, True)
    # Trainable weights counted by hand: 3072 x 8 kernel, BatchNorm's gamma and beta, the 8 x 100 logits and bias;
    # the recipe's 1536 and 768 units: 3072 x 1536 + 2 x 1536 + 1536 x 768 + 2 x 768 + 768 x 100 + 100.
    assert (tiny["trainable_params"], recipe["trainable_params"]) == (25_492, 5_979_748)
    table = tables.bench_table(out)
    assert "| Variant | Recipe options changed |" in table
    assert '| tiny | model_args {"hidden": [8]}, noise 0.05, jit_compile "on" |' in table


def test_bench_times_a_progressive_resizing_variant_on_its_small_images():
    from cifar_keras.reporting import bench

    tiny = {"model_args": {"widths": [8, 8, 8]}}
    full = bench.measure("cnn", "float32", 8, 1, 1, tiny)
    low_res = bench.measure("cnn", "float32", 8, 1, 1, {**tiny, "low_res": 16, "low_res_epochs": 2})
    assert (full["image_size"], low_res["image_size"]) == (32, 16)


@pytest.mark.parametrize("variant, message", [("tiny", "expected NAME=JSON"), ("x=[1]", "expected a JSON object"),
                                              ('x={"bogus": 1}', "unknown option 'bogus'"),
                                              ('x={"epochs": 2}', "epochs and batch_size are the bench's own")])
def test_a_bad_variant_is_a_one_line_error(variant, message, capsys):
    try:
        status = cli.main(["bench", "mlp", "--variant", variant])
    except SystemExit as e:  # argparse's own usage error for the form of the flag
        status = e.code
    assert status == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_bench_rejects_unknown_backend(capsys):
    assert cli.main(["bench", "--backends", "tensorflow,mxnet"]) == 2
    assert "--backends: unknown mxnet" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_layouts_split_the_cores_and_count_the_gradient_exchange(tmp_path, monkeypatch):
    pytest.importorskip("jax")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # bench must clear it
    out = tmp_path / "processes.json"
    argv = ["bench", "mlp", "--layouts", "1x1,2x1", "--batch-size", "32", "--steps", "3", "--warmup", "1",
            "--output", str(out)]
    assert cli.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "bench_processes" and record["backend"] == "jax"
    one, two = record["results"]
    assert (one["layout"], one["processes"], one["devices"], one["global_batch_size"]) == ("1x1", 1, 1, 32)
    assert (two["layout"], two["processes"], two["devices"], two["global_batch_size"]) == ("2x1", 2, 2, 64)
    assert one["train_images_per_s"] > 0 and two["train_images_per_s"] > 0
    # Two processes must exchange at least the gradients every step (an all-reduce moves each process's copy
    # out once); one process alone has nothing to exchange.
    assert two["network_bytes_sent_per_step"] >= 0.9 * two["trainable_bytes"]
    assert one["network_bytes_sent_per_step"] < 0.1 * one["trainable_bytes"]


@pytest.mark.parametrize("text, message", [("2", "not PROCESSESxCORES"), ("0x1", "at least 1 process"),
                                           ("64x64", "need 4096 cores"), (",", "at least one layout")])
def test_bench_rejects_bad_layouts(text, message, capsys):
    assert cli.main(["bench", "--layouts", text]) == 2
    assert message in capsys.readouterr().err


def test_a_bench_under_an_isa_limit_says_so_in_its_table(tmp_path):
    """A bench run with ONEDNN_MAX_CPU_ISA set stands in for a smaller CPU: its table must not read as native."""
    result = {"backend": "tensorflow", "precision": "float32", "train_images_per_s": 119.0,
              "pipeline_images_per_s": 9000.0, "settings": {"variables": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}}
    record = {"model": "cnn", "batch_size": 256, "steps": 15, "warmup": 3, "command": "python -m cifar_keras bench",
              "hardware": {"cpu": "Xeon", "cores": 2, "cpu_features": ["amx_bf16", "avx2"]}, "results": [result]}
    (tmp_path / "bench_isa.json").write_text(json.dumps(record))
    assert "CPU features: amx_bf16, avx2; oneDNN limited to AVX2 by ONEDNN_MAX_CPU_ISA)" in tables.bench_table(
        tmp_path / "bench_isa.json")
    # XLA's and PyTorch's own kernels have their own limits; a table names each one set.
    result["settings"]["variables"].update(XLA_FLAGS="--xla_cpu_max_isa=AVX2 --xla_cpu_enable_fast_math=false",
                                           ATEN_CPU_CAPABILITY="avx2")
    (tmp_path / "bench_isa.json").write_text(json.dumps(record))
    assert ("avx2; oneDNN limited to AVX2 by ONEDNN_MAX_CPU_ISA; XLA limited to AVX2 by XLA_FLAGS; PyTorch's kernels "
            "limited to avx2 by ATEN_CPU_CAPABILITY)") in tables.bench_table(tmp_path / "bench_isa.json")
