import json

from cifar_keras import cli, report


def test_bench_measures_each_combination_and_records_it(tmp_path, capsys):
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
    table = report.bench_table(out)
    assert table.count("\n| tensorflow |") == 2 and "mixed_bfloat16" in table


def test_bench_rejects_unknown_backend(capsys):
    assert cli.main(["bench", "--backends", "tensorflow,mxnet"]) == 2
    assert "--backends: unknown mxnet" in capsys.readouterr().err
