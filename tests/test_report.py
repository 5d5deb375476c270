import json

import pytest

from cifar_keras import cli
from cifar_keras.reporting import report
from cifar_keras.errors import UserError


def fit_record(name, model, top1, minutes, training_flops=1_054_000_000_000_000, inference_flops=520_000_000):
    return {
        "kind": "fit", "model": model, "name": name, "command": f"python -m cifar_keras fit {model}",
        "params": 1_234_567, "epochs": 7, "precision": "mixed_bfloat16", "train_wall_time_s": minutes * 60,
        "throughput": {"train_images_per_s": 321.4},
        "compute": {"counted": "analytic", "forward_flops_per_image": inference_flops,
                    "inference_flops_per_image": inference_flops, "train_images_seen": 1000,
                    "training_flops": training_flops},
        "test": {"top1": top1, "top5": top1 + 20, "superclass": top1 + 10},
        "hardware": {"cpu": "Test CPU", "cores": 2, "gpus": []},
    }


@pytest.fixture
def project(tmp_path):
    records = tmp_path / "saved_models"
    records.mkdir()
    (records / "cnn.json").write_text(json.dumps(fit_record("cnn", "cnn", 71.25, 40)))
    (records / "mlp.json").write_text(json.dumps(fit_record("mlp", "mlp", 31.5, 5, 5_040_000_000_000, 12_000_000)))
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
    assert rows[0].startswith("| `mlp` | 1.23 M | **31.50 %** | 51.50 % | 41.50 % | 7 | 5.0 TFLOP | "
                              "12.00 MFLOP/image | 5.0 min | 321 |")
    assert "| `cnn` |" in rows[1] and "**71.25 %**" in rows[1] and "40.0 min" in rows[1]
    assert "| 7 | 1.05 PFLOP | 0.52 GFLOP/image | 40.0 min |" in rows[1]
    assert "Test CPU (2 cores)" in rows[1] and "`python -m cifar_keras fit cnn --hparams none`" in rows[1]
    assert "| built-in (`--hparams none`) |" in rows[1]


def test_report_is_idempotent(project, capsys):
    readme, records = project
    argv = ["report", "--readme", str(readme), "--records", str(records), "--no-figures"]
    assert cli.main(argv) == 0
    first = readme.read_text()
    assert cli.main(argv) == 0
    assert readme.read_text() == first and "already up to date" in capsys.readouterr().out


def test_tables_only_update_keeps_the_figures(project):
    readme, records = project
    analysis = f"{report.ANALYSIS_START}docs/figures/training_curves.png)\n\nTest-set analysis of `cnn.keras`: ..."
    assert report.update_readme(readme, records, analysis)
    (records / "mlp.json").unlink()  # a table change, then a tables-only update
    assert report.update_readme(readme, records)
    text = readme.read_text()
    assert "| `mlp` |" not in text and "| `cnn` |" in text
    assert text.index(analysis) < text.index(report.END)


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
    for name in ("training_curves", "accuracy_vs_compute", "ablation_curves", "superclass_confusion",
                 "per_class_accuracy", "examples"):
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


def test_training_compute_of_an_old_record_is_counted_from_its_model():
    old = {"model": "mlp", "train_images": 600, "epochs": 3, "global_batch_size": 128, "flip_tta": True,
           "config": {"model_args": {"hidden": [16, 8]}, "batch_size": 64}}
    forward = 2 * (32 * 32 * 3 * 16 + 16 * 8 + 8 * 100)  # the three Dense kernels
    images = (600 // 128) * 128 * 3  # full global batches only
    compute = report.training_compute(old)
    assert compute["forward_flops_per_image"] == forward and compute["train_images_seen"] == images
    assert compute["training_flops"] == 3 * forward * images
    # Flip TTA: the model twice, and the 32x32 mirror over 32 rows x 3 channels.
    assert compute["inference_flops_per_image"] == 2 * forward + 2 * 32 * 32 * 32 * 3
    assert report.training_compute({**old, "flip_tta": False})["inference_flops_per_image"] == forward
    new = fit_record("cnn", "cnn", 70.0, 1)
    assert report.training_compute(new) is new["compute"]


def test_study_table_uses_its_reference_and_shows_flip_tta(project):
    readme, records = project
    folder = records / "study"
    folder.mkdir()
    hardware = {"cpu": "Test CPU", "cores": 2, "gpus": [], "cpu_features": ["avx2", "amx_bf16"]}
    reference = {**ablation_record("ref_e7", 60.0, tta=False, time_budget=None), "hardware": hardware}
    reference["command"] = "python -m cifar_keras fit cnn --output-dir /elsewhere/study --name ref_e7"  # since moved
    candidate = ablation_record("ls01", 61.25, tta=True, time_budget=30.0, label_smoothing=0.1)
    candidate["val"]["top1_flip_tta"] = 62.5
    (folder / "ref_e7.json").write_text(json.dumps(reference))
    (folder / "ls01.json").write_text(json.dumps(candidate))
    report.update_readme(readme, records)
    text = readme.read_text()
    intro = next(line for line in text.splitlines() if line.startswith("Recipe study of `cnn`"))
    assert f"equal training compute). Runs in `{(records / 'study').as_posix()}/`: 10000 training images" in intro
    assert "Small-scale recipe ablations" not in text  # no ablations/ folder: no section
    rows = [line for line in text.splitlines() if line.startswith("| `ref_e7`") or line.startswith("| `ls01`")]
    assert rows[0].startswith("| `ref_e7` | (reference) | 60.00 % | +0.00 |")
    assert "| — | 1.05 PFLOP | Test CPU (2 cores) [avx2, amx_bf16] | `python -m cifar_keras fit cnn --hparams none " in rows[0]
    assert rows[0].endswith(f" --output-dir {folder.as_posix()} --name ref_e7` |")  # where the record is now
    assert "/elsewhere" not in text
    assert rows[1].startswith("| `ls01` | label_smoothing=0.1 | 61.25 % | +1.25 |")  # tta, time_budget: not recipe
    assert "| 62.50 % | 1.05 PFLOP | Test CPU (2 cores) | `" in rows[1]


def test_a_screening_subfolder_gets_its_own_table(project):
    readme, records = project
    (records / "study").mkdir()
    (records / "study" / "ref_e7.json").write_text(json.dumps(ablation_record("ref_e7", 60.0)))
    screening = records / "study" / "muon_lr"
    screening.mkdir()
    (screening / "sgd_lr0.2.json").write_text(json.dumps(ablation_record("sgd_lr0.2", 20.0)))
    (screening / "muon.json").write_text(json.dumps(ablation_record("muon", 23.5, optimizer="muon")))
    (screening / "muon_val_tta.json").write_text(json.dumps({"kind": "evaluate", "top1": 24.0}))  # not a row
    report.update_readme(readme, records)
    tables = readme.read_text().split("Learning-rate screening")
    assert len(tables) == 2 and "| `muon` |" not in tables[0]  # not in the full-scale study's table
    assert "| `muon` | optimizer=muon | 23.50 % | +3.50 |" in tables[1]


def test_accuracy_vs_compute_figure(tmp_path):
    from PIL import Image

    from cifar_keras.reporting import plots

    points = [{"name": "cnn", "pflop": 1.05, "top1": 70.2, "test": True, "flip_tta": None},
              {"name": "ref_e7", "pflop": 0.5, "top1": 60.0, "test": False, "flip_tta": 61.5}]
    path = tmp_path / "accuracy_vs_compute.png"
    plots.accuracy_vs_compute(points, path)
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()


def test_compute_points_cover_every_folder_and_name_a_malformed_record(project):
    _, records = project
    (records / "study").mkdir()
    candidate = ablation_record("ls01", 61.25)
    candidate["val"]["top1_flip_tta"] = 62.5
    (records / "study" / "ls01.json").write_text(json.dumps(candidate))
    points = {p["name"]: p for p in report.compute_points(records)}
    assert sorted(points) == ["cnn", "ls01", "mlp"]
    assert points["cnn"] == {"name": "cnn", "pflop": 1.054, "top1": 71.25, "test": True, "flip_tta": None}
    assert points["ls01"]["test"] is False and points["ls01"]["flip_tta"] == 62.5
    del candidate["val"]
    (records / "study" / "ls01.json").write_text(json.dumps(candidate))
    with pytest.raises(UserError, match=r"ls01\.json: malformed run record \(KeyError"):
        report.compute_points(records)


def test_a_rows_command_reproduces_its_run_after_the_recipe_changed(tmp_path):
    """A built-in-recipe run's command gets the flags that today's recipe no longer implies."""
    import dataclasses
    import shlex

    from cifar_keras import config
    from cifar_keras import cli
    from cifar_keras.reporting import report

    ran = dataclasses.replace(config.make_config("cnn"), label_smoothing=0.0, flip=not config.make_config("cnn").flip,
                              model_args={"widths": [8, 8, 8]})
    record = {"kind": "fit", "model": "cnn", "hparams_file": None, "config": ran.to_dict(),
              "command": "python -m cifar_keras fit cnn --epochs 15"}
    command = report.reproducing_command(record)
    argv = shlex.split(command)[3:]
    args = cli.build_parser().parse_args(argv)
    assert args.hparams == "none"
    rebuilt = config.make_config("cnn", model_args=args.model_args, **config.overrides(args, cli.FIT_OPTIONS))
    assert rebuilt == ran


def test_replaced_models_stay_in_the_table_as_previous(project):
    readme, records = project
    (records / "previous").mkdir()
    (records / "previous" / "cnn.json").write_text(json.dumps(fit_record("cnn", "cnn", 70.16, 34)))
    report.update_readme(readme, records)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`", "| `previous/cnn`"]
    assert "**70.16 %**" in rows[2] and "**71.25 %**" in rows[1]
    assert [p["name"] for p in report.compute_points(records)].count("previous/cnn") == 1


def test_a_run_adopted_under_another_name_shows_as_the_file_it_was_committed_as(project):
    readme, records = project
    adopted = fit_record("cnn_muon", "cnn", 73.1, 90)
    adopted["command"] += " --optimizer muon --name cnn_muon"
    (records / "cnn.json").write_text(json.dumps(adopted))
    report.update_readme(readme, records)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`"] and "**73.10 %**" in rows[1]
    # Rerunning its command writes saved_models/cnn.*, the files it is committed as.
    command = rows[1].split(" | ")[-1]
    assert "--optimizer muon" in command and "--name" not in command
    assert command.endswith(f" --output-dir {records.as_posix()}` |")


def test_candidates_that_were_not_adopted_show_under_their_folder_and_file_name(project):
    readme, records = project
    (records / "robust").mkdir()
    (records / "robust" / "cnn_noise.json").write_text(json.dumps(fit_record("cnn", "cnn", 70.2, 85)))
    report.update_readme(readme, records)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`", "| `robust/cnn_noise`"]
    # Its command writes it back where it is, under its own name, not over today's cnn.
    assert rows[2].endswith(f"--output-dir {(records / 'robust').as_posix()} --name cnn_noise` |")
    assert "robust/cnn_noise" in [p["name"] for p in report.compute_points(records)]
