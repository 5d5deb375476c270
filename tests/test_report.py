import json

import pytest

from cifar_keras import cli
from cifar_keras.cli import app as cli_app
from cifar_keras.cli import fit as cli_fit
from cifar_keras.errors import UserError
from cifar_keras.reporting import figures, plots, report, runs, tables


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
    readme.write_text(f"# Title\n{report.HEADLINE[0]}\nold headline\n{report.HEADLINE[1]}\n\nBefore.\n"
                      f"{report.BEGIN}\nold table\n{report.END}\nAfter.\n")
    return readme, records


def page(readme):
    """The results page that `report` writes beside README."""
    return (readme.parent / "docs" / "results.md").read_text()


def rows_of(text, start="| `"):
    return [line for line in text.splitlines() if line.startswith(start)]


def test_table_rows_come_from_the_records_mlp_first(project):
    readme, records = project
    assert report.update_readme(readme, records) is True
    text = readme.read_text()
    assert text.startswith(f"# Title\n{report.HEADLINE[0]}\n") and text.endswith(f"{report.END}\nAfter.\n")
    assert "old table" not in text and "old headline" not in text
    # README: the headline (the four headline runs, here two) and a short table of every run.
    headline = rows_of(text, "| MLP") + rows_of(text, "| CNN")
    assert headline == ["| MLP, built-in recipe (`mlp`) | 31.50 % | **31.50 %** | single view | 5.0 TFLOP | — | "
                        "Test CPU, 2 cores: features not recorded |",
                        "| CNN (`cnn`) | 71.25 % | **71.25 %** | single view | 1.05 PFLOP | — | "
                        "Test CPU, 2 cores: features not recorded |"]
    short = rows_of(text)
    assert [row.split(" | ")[0] for row in short] == ["| `mlp`", "| `cnn`"]
    assert short[1].endswith(f"| `{(records / 'cnn.json').as_posix()}` |")
    # The results page: every column.
    rows = rows_of(page(readme))
    assert len(rows) == 2
    assert rows[0].startswith("| `mlp` | 1.23 M | 31.50 % | **31.50 %** | single view | 51.50 % | 41.50 % | 7 | "
                              "5.0 TFLOP | 12.00 MFLOP/image | 5.0 min | — | 321 |")
    assert "| `cnn` |" in rows[1] and "**71.25 %**" in rows[1] and "40.0 min" in rows[1]
    assert "| 7 | 1.05 PFLOP | 0.52 GFLOP/image | 40.0 min |" in rows[1]
    assert "Test CPU (2 cores)" in rows[1] and "`python -m cifar_keras fit cnn --hparams none`" in rows[1]
    assert "| built-in (`--hparams none`) |" in rows[1]


def test_a_fit_record_with_its_own_single_view_score_needs_no_evaluate_record(project):
    readme, records = project
    run = {**fit_record("cnn_budget45_amx", "cnn", 74.5, 44), "flip_tta": True, "translate_tta": True,
           "test_single_view": {"top1": 71.25}}
    (records / "budget").mkdir()
    (records / "budget" / "cnn_budget45_amx.json").write_text(json.dumps(run))
    report.update_readme(readme, records)
    rows = {row.split(" | ")[0]: row for row in rows_of(page(readme))}
    assert "| 71.25 % | **74.50 %** | flip + translate (6 views) |" in rows["| `budget/cnn_budget45_amx`"]


def test_single_view_column_reads_the_evaluate_records(project):
    readme, records = project
    cnn = fit_record("cnn", "cnn", 73.88, 100)
    cnn.update(flip_tta=True, translate_tta=True, process_wall_time_s=3030.0,
               hardware={"cpu": "AMD EPYC", "cores": 2, "gpus": [], "cpu_features": ["avx2", "avx512f"]})
    budget = {**fit_record("cnn_budget45", "cnn", 71.92, 42), "flip_tta": True}
    (records / "cnn.json").write_text(json.dumps(cnn))
    (records / "cnn_budget45.json").write_text(json.dumps(budget))
    (records / "previous").mkdir()
    (records / "previous" / "cnn_muon.json").write_text(json.dumps(cnn))
    (records / "single_view").mkdir()
    evaluated = {"kind": "evaluate", "tta": "none", "split": "test", "test": {"top1": 70.69}}
    (records / "single_view" / "cnn.json").write_text(json.dumps(evaluated))
    (records / "single_view" / "previous_cnn_muon.json").write_text(
        json.dumps({**evaluated, "test": {"top1": 71.5}}))
    report.update_readme(readme, records)
    text = readme.read_text()
    assert ("| CNN (`cnn`) | 70.69 % | **73.88 %** | flip + translate (6 views) | 1.05 PFLOP | 50.5 min | "
            "AMD EPYC, 2 cores: AVX-512, no AMX |") in text
    assert "| CNN, `fit cnn --time-budget 45` (`cnn_budget45`) | — | **71.92 %** | flip (2 views) |" in text
    rows = {row.split(" | ")[0]: row for row in rows_of(page(readme))}
    assert "| 71.50 % | **73.88 %** | flip + translate (6 views) |" in rows["| `previous/cnn_muon`"]
    # A record of another TTA, or of the validation split, is not a single-view test score.
    (records / "single_view" / "cnn.json").write_text(json.dumps({**evaluated, "tta": "flip"}))
    with pytest.raises(UserError, match=r"single_view/cnn\.json: not an `evaluate --tta none` record"):
        report.update_readme(readme, records)


def test_cpu_class_says_what_decides_the_speed():
    def cpu(*features, name="Intel(R) Xeon(R) Processor"):
        return tables.cpu_class({"cpu": name, "cores": 2, "gpus": [], "cpu_features": list(features)})

    assert cpu("amx_bf16", "amx_tile", "avx2", "avx512f") == "Intel Xeon Processor, 2 cores: AMX"
    assert cpu("avx2", "avx512_bf16", "avx512f", name="AMD EPYC") == "AMD EPYC, 2 cores: AVX-512, no AMX"
    assert cpu("avx2", name="AMD EPYC") == "AMD EPYC, 2 cores: AVX2 only"
    assert cpu() == "Intel Xeon Processor, 2 cores: features not recorded"
    limited = {"cpu": "AMD EPYC", "cores": 2, "gpus": [], "cpu_features": ["avx2", "avx512f"],
               "onednn_max_cpu_isa": "AVX2"}
    assert tables.cpu_class(limited) == "AMD EPYC, 2 cores: AVX-512, no AMX, oneDNN limited to AVX2"


def test_a_record_states_a_onednn_limit(monkeypatch):
    from cifar_keras import hardware

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert "onednn_max_cpu_isa" not in hardware.environment()["hardware"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.environment()["hardware"]["onednn_max_cpu_isa"] == "AVX2"


def test_report_is_idempotent(project, capsys):
    readme, records = project
    argv = ["report", "--readme", str(readme), "--records", str(records), "--no-figures"]
    assert cli.main(argv) == 0
    first, first_page = readme.read_bytes(), (readme.parent / "docs" / "results.md").read_bytes()
    assert cli.main(argv) == 0
    assert readme.read_bytes() == first and (readme.parent / "docs" / "results.md").read_bytes() == first_page
    assert "already up to date" in capsys.readouterr().out


def test_the_results_page_keeps_its_text_around_the_markers(project):
    readme, records = project
    (readme.parent / "docs").mkdir()
    (readme.parent / "docs" / "results.md").write_text(f"# Results\n\nIntro.\n{report.BEGIN}\nx\n{report.END}\n"
                                                     "Discussion.\n")
    report.update_readme(readme, records)
    text = page(readme)
    assert text.startswith("# Results\n\nIntro.\n") and text.endswith(f"{report.END}\nDiscussion.\n")
    assert len(rows_of(text)) == 2
    (readme.parent / "docs" / "results.md").write_text("# Results without markers\n")
    with pytest.raises(UserError, match=r"results\.md: report markers not found"):
        report.update_readme(readme, records)


def test_tables_only_update_keeps_the_figures(project):
    readme, records = project
    analysis = f"{figures.ANALYSIS_START}figures/training_curves.png)\n\nTest-set analysis of `cnn.keras`: ..."
    assert report.update_readme(readme, records, analysis)
    (records / "mlp.json").unlink()  # a table change, then a tables-only update
    assert report.update_readme(readme, records)
    text = page(readme)
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
    from PIL import Image

    from cifar_keras import models

    readme, records = project
    models.cnn(widths=(8, 8, 8), stem_width=8).save(records / "cnn.keras")
    header = "epoch,accuracy,loss,val_accuracy,val_loss\n"
    (records / "cnn.log.csv").write_text(header + "0,0.1,4.0,0.12,3.9\n1,0.2,3.5,0.21,3.4\n")
    (records / "mlp.log.csv").write_text(header + "0,0.05,4.3,0.06,4.2\n")
    (records / "ablations").mkdir()
    (records / "ablations" / "reference.log.csv").write_text(header + "0,0.1,4.0,0.12,3.9\n")
    argv = ["report", "--readme", str(readme), "--records", str(records), "--figures",
            str(tmp_path / "docs" / "figures"), "--data-dir", str(data_root)]
    assert cli.main(argv) == 0
    text = page(readme)
    for name in ("training_curves", "accuracy_vs_compute", "ablation_curves", "superclass_confusion",
                 "per_class_accuracy", "examples"):
        assert f"(figures/{name}.png)" in text  # relative to docs/results.md
        with Image.open(tmp_path / "docs" / "figures" / f"{name}.png") as image:
            image.verify()
    assert "- worst classes: " in text and "- most frequent confusions" in text
    assert "as shipped (single view)" in text  # the test model has no TTA
    assert text.endswith(f"{report.END}\n")
    readme_text = readme.read_text()
    figure_bytes = {path.name: path.read_bytes() for path in (tmp_path / "docs" / "figures").iterdir()}
    assert cli.main(argv) == 0
    assert page(readme) == text and readme.read_text() == readme_text
    assert {path.name: path.read_bytes() for path in (tmp_path / "docs" / "figures").iterdir()} == figure_bytes
    assert "already up to date" in capsys.readouterr().out


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
    rows = [line for line in page(readme).splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert rows == ["| 1 | 30.00 % | 4 | 0.3 |", "| 0 | 20.00 % | 4 | 0.1 |"]
    assert "| Trial | Val top-1, single view | Epochs | dropout |" in page(readme)

    # A cost-aware search in a nested folder: each trial shows the epochs its budget allowed.
    nested = readme.parent / "tuning" / "budget" / "mlp"
    nested.mkdir(parents=True)
    budget = {"budget_minutes": 68.2, "of": "recipe", "recipe_epochs": 40, "recipe_images_per_s": 100.0}
    (nested / "search.json").write_text(json.dumps({**search, "budget": budget}))
    (nested / "trials.json").write_text(json.dumps([{**trials[0], "epochs": 12.0}, {**trials[1], "epochs": 31.0}]))
    report.update_readme(readme, records)
    text = page(readme)
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
    rows = rows_of(page(readme))
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`", "| `reference`", "| `no_aug`"]
    assert rows[2].startswith("| `reference` | (reference) | 50.00 % | +0.00 | — |")
    assert rows[3].startswith("| `no_aug` | crop_pad=0, flip=False | 41.50 % | -8.50 | 87.50 % |")
    assert "10000 training images, scored on 5000 validation images" in page(readme)
    assert "| Run | Change | Val top-1, single view | Δ val |" in page(readme)


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
    compute = runs.training_compute(old)
    assert compute["forward_flops_per_image"] == forward and compute["train_images_seen"] == images
    assert compute["training_flops"] == 3 * forward * images
    # Flip TTA: the model twice, and the 32x32 mirror over 32 rows x 3 channels.
    assert compute["inference_flops_per_image"] == 2 * forward + 2 * 32 * 32 * 32 * 3
    assert runs.training_compute({**old, "flip_tta": False})["inference_flops_per_image"] == forward
    new = fit_record("cnn", "cnn", 70.0, 1)
    assert runs.training_compute(new) is new["compute"]


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
    text = page(readme)
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
    parts = page(readme).split("Learning-rate screening")
    assert len(parts) == 2 and "| `muon` |" not in parts[0]  # not in the full-scale study's table
    assert "| `muon` | optimizer=muon | 23.50 % | +3.50 |" in parts[1]


def test_accuracy_vs_compute_figure_labels_every_run_without_overlap(tmp_path):
    from PIL import Image

    # Many runs at nearly equal compute and score, as in the recipe study.
    points = [{"name": f"study_run_{k}", "pflop": 0.47, "top1": 70.0 + 0.05 * k, "test": False,
               "flip_tta": 71.0 + 0.05 * k} for k in range(12)]
    points += [{"name": "cnn", "pflop": 1.05, "top1": 70.2, "test": True, "flip_tta": None},
               {"name": "ablation", "pflop": 0.05, "top1": 20.0, "test": False, "flip_tta": None}]
    path = tmp_path / "accuracy_vs_compute.png"
    boxes = plots.accuracy_vs_compute(points, path)
    assert len(boxes) == len(points)
    for k, a in enumerate(boxes):
        for b in boxes[k + 1:]:
            assert not a.overlaps(b)
    with Image.open(path) as image:
        assert image.width <= 10 * plots.PNG["dpi"]
        assert max(box.x1 for box in boxes) <= image.width  # no label cut off
        image.verify()


def test_spread_keeps_labels_apart_and_in_range():
    assert plots.spread([0.1, 0.5, 0.9], 0.1, 0.0, 1.0) == [0.1, 0.5, 0.9]  # room enough: unmoved
    assert plots.spread([0.5, 0.5, 0.5], 0.1, 0.0, 1.0) == pytest.approx([0.5, 0.6, 0.7])
    assert plots.spread([0.95, 0.95], 0.1, 0.0, 1.0) == pytest.approx([0.9, 1.0])  # pushed down from the top
    assert plots.spread([-0.2], 0.1, 0.0, 1.0) == [0.0]


def test_rankings_round_as_printed_and_break_ties_by_name():
    import numpy as np

    # Two confusions that both print as 7 %: the order must not depend on 7.04 against 6.96.
    names = ["vehicles 2", "medium mammals", "vehicles 1", "small mammals"]
    for first, second in ((7.04, 6.96), (6.96, 7.04)):
        matrix = np.zeros((4, 4))
        matrix[2, 0], matrix[1, 3], matrix[0, 1] = first, second, 3.0
        assert figures.most_confused(matrix, names, top=3) == [
            ("medium mammals", "small mammals", second), ("vehicles 1", "vehicles 2", first),
            ("vehicles 2", "medium mammals", 3.0)]
    # Fine-class mistakes of equal count: by true name, then predicted name.
    true = np.array([2, 2, 1, 1, 0])
    predicted = np.array([0, 0, 2, 2, 1])
    assert plots.confused_pairs(predicted, true, ["c", "b", "a"], top=3) == [("a", "c", 2), ("b", "a", 2),
                                                                                 ("c", "b", 1)]


def test_per_class_ranking_breaks_ties_by_name(tmp_path):
    import numpy as np

    fine = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 0, 2, 2])  # "zebra" 50 %, "ant" 50 %, "mole" 100 %
    ranking = plots.per_class_accuracy(predicted, fine, ["zebra", "ant", "mole"], tmp_path / "classes.png")
    assert ranking == [("mole", 100.0), ("ant", 50.0), ("zebra", 50.0)]


def test_compute_points_cover_every_folder_and_name_a_malformed_record(project):
    _, records = project
    (records / "study").mkdir()
    candidate = ablation_record("ls01", 61.25)
    candidate["val"]["top1_flip_tta"] = 62.5
    (records / "study" / "ls01.json").write_text(json.dumps(candidate))
    points = {p["name"]: p for p in runs.compute_points(records)}
    assert sorted(points) == ["cnn", "ls01", "mlp"]
    assert points["cnn"] == {"name": "cnn", "pflop": 1.054, "top1": 71.25, "test": True, "flip_tta": None}
    assert points["ls01"]["test"] is False and points["ls01"]["flip_tta"] == 62.5
    del candidate["val"]
    (records / "study" / "ls01.json").write_text(json.dumps(candidate))
    with pytest.raises(UserError, match=r"ls01\.json: malformed run record \(KeyError"):
        runs.compute_points(records)


def test_a_rows_command_reproduces_its_run_after_the_recipe_changed(tmp_path):
    """A built-in-recipe run's command gets the flags that today's recipe no longer implies."""
    import dataclasses
    import shlex

    from cifar_keras import config

    ran = dataclasses.replace(config.make_config("cnn"), label_smoothing=0.0, flip=not config.make_config("cnn").flip,
                              model_args={"widths": [8, 8, 8]})
    record = {"kind": "fit", "model": "cnn", "hparams_file": None, "config": ran.to_dict(),
              "command": "python -m cifar_keras fit cnn --epochs 15"}
    command = runs.reproducing_command(record)
    argv = shlex.split(command)[3:]
    args = cli_app.build_parser().parse_args(argv)
    assert args.hparams == "none"
    rebuilt = config.make_config("cnn", model_args=args.model_args, **config.overrides(args, cli_fit.FIT_OPTIONS))
    assert rebuilt == ran


def test_replaced_models_stay_in_the_table_as_previous(project):
    readme, records = project
    (records / "previous").mkdir()
    (records / "previous" / "cnn.json").write_text(json.dumps(fit_record("cnn", "cnn", 70.16, 34)))
    report.update_readme(readme, records)
    rows = rows_of(page(readme))
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`", "| `previous/cnn`"]
    assert "**70.16 %**" in rows[2] and "**71.25 %**" in rows[1]
    assert [row.split(" | ")[0] for row in rows_of(readme.read_text())] == [row.split(" | ")[0] for row in rows]
    assert [p["name"] for p in runs.compute_points(records)].count("previous/cnn") == 1


def test_a_run_adopted_under_another_name_shows_as_the_file_it_was_committed_as(project):
    readme, records = project
    adopted = fit_record("cnn_muon", "cnn", 73.1, 90)
    adopted["command"] += " --optimizer muon --name cnn_muon"
    (records / "cnn.json").write_text(json.dumps(adopted))
    report.update_readme(readme, records)
    rows = rows_of(page(readme))
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
    rows = rows_of(page(readme))
    assert [row.split(" | ")[0] for row in rows] == ["| `mlp`", "| `cnn`", "| `robust/cnn_noise`"]
    # Its command writes it back where it is, under its own name, not over today's cnn.
    assert rows[2].endswith(f"--output-dir {(records / 'robust').as_posix()} --name cnn_noise` |")
    assert "robust/cnn_noise" in [p["name"] for p in runs.compute_points(records)]
