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
    assert "| built-in (`--hparams none`) |" in rows[1]


def test_report_is_idempotent(project, capsys):
    readme, records = project
    argv = ["report", "--readme", str(readme), "--records", str(records), "--no-figures"]
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


def test_figures_and_analysis_are_written_and_stable(project, data_root, tmp_path, capsys):
    import keras
    from PIL import Image

    from cifar_keras import models

    readme, records = project
    models.cnn(widths=(8, 8, 8), stem_width=8).save(records / "cnn.keras")
    header = "epoch,accuracy,loss,val_accuracy,val_loss\n"
    (records / "cnn.log.csv").write_text(header + "0,0.1,4.0,0.12,3.9\n1,0.2,3.5,0.21,3.4\n")
    (records / "mlp.log.csv").write_text(header + "0,0.05,4.3,0.06,4.2\n")
    (records / "ablations").mkdir()
    (records / "ablations" / "reference.log.csv").write_text(header + "0,0.1,4.0,0.12,3.9\n")
    argv = ["report", "--readme", str(readme), "--records", str(records), "--figures", str(tmp_path / "docs"),
            "--data-dir", str(data_root)]
    assert cli.main(argv) == 0
    text = readme.read_text()
    for name in ("training_curves", "ablation_curves", "superclass_confusion", "per_class_accuracy", "examples"):
        assert f"(docs/{name}.png)" in text
        with Image.open(tmp_path / "docs" / f"{name}.png") as image:
            image.verify()
    assert "- worst classes: " in text and "- most frequent confusions" in text
    assert text.endswith(f"{report.END}\nAfter.\n")
    assert cli.main(argv) == 0
    assert readme.read_text() == text and "already up to date" in capsys.readouterr().out


def test_missing_model_is_a_one_line_error(project, data_root, tmp_path, capsys):
    readme, records = project  # cnn.json is there, cnn.keras is not
    before = readme.read_text()
    argv = ["report", "--readme", str(readme), "--records", str(records), "--figures", str(tmp_path / "docs"),
            "--data-dir", str(data_root)]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{records / 'cnn.keras'}: " in lines[0] and "not found" in lines[0]
    # Nothing was half-done: no figures, README as it was.
    assert not (tmp_path / "docs").exists() and readme.read_text() == before


def test_evaluate_writes_figures(data_root, tmp_path):
    from cifar_keras import models

    models.mlp(hidden=(16, 16)).save(tmp_path / "m.keras")
    assert cli.main(["evaluate", str(tmp_path / "m.keras"), "--data-dir", str(data_root),
                     "--report-dir", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "examples.png", "per_class_accuracy.png", "superclass_confusion.png"]


def test_tuning_trials_table_best_first(project):
    readme, records = project
    folder = readme.parent / "tuning" / "mlp"
    folder.mkdir(parents=True)
    search = {"kind": "tune", "model": "mlp", "tuner": "random", "trials": 3, "train_images": 300,
              "val_images": 100, "epochs": 4, "search_wall_time_s": 120, "command": "python -m cifar_keras tune mlp",
              "hardware": {"cpu": "Test CPU", "cores": 2}}
    trials = [{"trial_id": "0", "status": "COMPLETED", "val_accuracy": 0.2, "hyperparameters": {"dropout": 0.1}},
              {"trial_id": "1", "status": "COMPLETED", "val_accuracy": 0.3, "hyperparameters": {"dropout": 0.3}},
              {"trial_id": "2", "status": "RUNNING", "val_accuracy": None, "hyperparameters": {"dropout": 0.5}}]
    (folder / "search.json").write_text(json.dumps(search))
    (folder / "trials.json").write_text(json.dumps(trials))
    report.update_readme(readme, records)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert rows == ["| 1 | 30.00 % | 4 | 0.3 |", "| 0 | 20.00 % | 4 | 0.1 |"]

    # A cost-aware search in a nested folder: each trial shows the epochs its budget allowed.
    nested = readme.parent / "tuning" / "budget" / "mlp"
    nested.mkdir(parents=True)
    budget = {"budget_minutes": 68.2, "of": "recipe", "recipe_epochs": 40, "recipe_images_per_s": 100.0}
    (nested / "search.json").write_text(json.dumps({**search, "budget": budget}))
    (nested / "trials.json").write_text(json.dumps([{**trials[0], "epochs": 12.0}, {**trials[1], "epochs": 31.0}]))
    report.update_readme(readme, records)
    text = readme.read_text()
    assert "each trial given its share of a 68-minute full run (the built-in recipe's time)" in text
    assert "| 1 | 30.00 % | 31 | 0.3 |" in text and "| 0 | 20.00 % | 12 | 0.1 |" in text


def ablation_record(name, top1, **config):
    record = fit_record(name, "cnn", 0.0, 4)
    config = {"crop_pad": 4, "flip": True, "label_smoothing": 0.2, "seed": 0, "hparams_file": None, **config}
    return {**record, "test": None, "val": {"top1": top1}, "config": config, "train_images": 10000, "val_images": 5000}


def test_ablations_are_compared_with_the_reference_on_validation(project):
    readme, records = project
    folder = records / "ablations"
    folder.mkdir()
    (folder / "reference.json").write_text(json.dumps(ablation_record("reference", 50.0)))
    (folder / "no_aug.json").write_text(json.dumps(ablation_record("no_aug", 41.5, crop_pad=0, flip=False)))
    (folder / "no_aug.log.csv").write_text("epoch,accuracy\n0,0.5\n1,0.875\n")  # the reference has no log
    (records / "study.json").write_text(json.dumps(ablation_record("study", 1.0)))  # no test score: not in the table
    report.update_readme(readme, records)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`", "| `reference`", "| `no_aug`"]
    assert rows[2].startswith("| `reference` | (reference) | 50.00 % | +0.00 | — |")
    assert rows[3].startswith("| `no_aug` | crop_pad=0, flip=False | 41.50 % | -8.50 | 87.50 % |")
    assert "10000 training images, scored on 5000 validation images" in readme.read_text()


def test_empty_ablation_log_names_the_file(project):
    readme, records = project
    (records / "ablations").mkdir()
    (records / "ablations" / "reference.json").write_text(json.dumps(ablation_record("reference", 50.0)))
    (records / "ablations" / "reference.log.csv").write_text("epoch,accuracy\n")
    with pytest.raises(UserError, match=r"reference\.log\.csv: epoch log has no rows"):
        report.update_readme(readme, records)
