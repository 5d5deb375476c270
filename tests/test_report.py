import json

import pytest

from cifar_keras import cli, report
from cifar_keras.errors import UserError


def fit_record(name, model, top1, minutes):
    return {
        "kind": "fit", "model": model, "name": name, "command": f"python -m cifar_keras fit {model}",
        "params": 1_234_567, "epochs": 7, "precision": "mixed_bfloat16", "train_wall_time_s": minutes * 60,
        "throughput": {"train_images_per_s": 321.4},
        "test": {"top1": top1, "top5": top1 + 20, "superclass": top1 + 10},
        "hardware": {"cpu": "Test CPU", "cores": 2, "gpus": []},
    }


@pytest.fixture
def project(tmp_path):
    records = tmp_path / "saved_models"
    records.mkdir()
    (records / "cnn.json").write_text(json.dumps(fit_record("cnn", "cnn", 71.25, 40)))
    (records / "mlp.json").write_text(json.dumps(fit_record("mlp", "mlp", 31.5, 5)))
    (records / "eval.json").write_text(json.dumps({"kind": "evaluate"}))  # not a fit: ignored
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nBefore.\n{report.BEGIN}\nold table\n{report.END}\nAfter.\n")
    return readme, records


def test_table_rows_come_from_the_records_mlp_first(project):
    readme, records = project
    assert report.update_readme(readme, records) is True
    text = readme.read_text()
    assert text.startswith("# Title\n\nBefore.\n") and text.endswith(f"{report.END}\nAfter.\n")
    assert "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 2
    assert rows[0].startswith("| `mlp` | 1.23 M | **31.50 %** | 51.50 % | 41.50 % | 7 | 5.0 min | 321 |")
    assert "| `cnn` |" in rows[1] and "**71.25 %**" in rows[1] and "40.0 min" in rows[1]
    assert "Test CPU (2 cores)" in rows[1] and "`python -m cifar_keras fit cnn`" in rows[1]


def test_report_is_idempotent(project, capsys):
    readme, records = project
    argv = ["report", "--readme", str(readme), "--records", str(records)]
    assert cli.main(argv) == 0
    first = readme.read_text()
    assert cli.main(argv) == 0
    assert readme.read_text() == first and "already up to date" in capsys.readouterr().out


def test_malformed_record_names_the_file(project):
    readme, records = project
    broken = fit_record("cnn", "cnn", 70, 1)
    del broken["test"]
    (records / "cnn.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match=r"cnn.json: malformed run record \(KeyError"):
        report.update_readme(readme, records)
    (records / "cnn.json").write_text("{not json")
    with pytest.raises(UserError, match="cnn.json: not valid JSON"):
        report.update_readme(readme, records)


def test_readme_without_markers_is_refused(project):
    readme, records = project
    readme.write_text("# no markers\n")
    with pytest.raises(UserError, match="markers not found"):
        report.update_readme(readme, records)
