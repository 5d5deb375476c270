"""--time-budget's choice of epochs and test-time views: the study table is its records', the choice follows the
table and the measured costs, and a larger budget never chooses a plan expected to score less."""

import json
from pathlib import Path

import pytest

from cifar_keras.config import make_config
from cifar_keras.training import budget, budget_study, fit

ROOT = Path(__file__).resolve().parents[1]
# A made-up study: views add 1 and 2 points; 3 -> 5 epochs looks worse on validation (seed noise).
RECIPE = {1: ((40.0, 41.0, 42.0), ""), 3: ((60.0, 62.0, 63.0), ""), 5: ((58.0, 63.0, 64.0), "")}
STUDY = {"recipe": RECIPE}
# And a variant without pixel noise, measured from 2 epochs: better than the recipe at 2-3 epochs, worse later.
NO_NOISE = {2: ((55.0, 56.0, 56.0), ""), 3: ((61.0, 62.5, 63.5), ""), 4: ((61.5, 62.5, 63.5), "")}


@pytest.mark.parametrize("variant, epochs", [(v, e) for v in budget_study.STUDY for e in sorted(budget_study.STUDY[v])])
def test_each_row_of_the_study_table_is_its_records(variant, epochs):
    scores, path = budget_study.STUDY[variant][epochs]
    record = json.loads((ROOT / path).read_text())
    assert record["model"] == "cnn" and record["epochs"] == epochs
    for option, value in budget_study.VARIANTS[variant].items():  # the record trained the variant
        assert record["config"][option] == value
    val = record["val"]
    assert scores == (val["top1"], val["top1_flip_tta"], val["top1_flip_translate_tta"])


@pytest.mark.parametrize("epochs, views, expected", [
    (1, 1, 40.0), (2, 1, 50.0), (3, 6, 63.0), (4, 2, 62.5),
    (5, 1, 60.0),  # 58 at 5 epochs is below 60 at 3: the column is made non-decreasing
    (9, 6, 64.0),  # past the last row: that row's
])
def test_expected_top1_interpolates_a_non_decreasing_column(epochs, views, expected):
    assert budget_study.expected_top1(epochs, views, RECIPE) == pytest.approx(expected)
    assert budget_study.expected_top1(1, views, NO_NOISE) is None  # before a variant's first row: not a candidate


def plan(minutes, model="cnn", finalise=None, study=STUDY, **flags):
    """(epochs, views, candidates) of choose_plan on a made-up machine: 30 s of start-up, 100 s an epoch;
    finalising 20 s a view."""
    finalise = finalise or (lambda views: 20.0 * views)
    chosen, candidates = budget.choose_plan(make_config(model, **flags), 60 * minutes, 30.0, 100.0, finalise, study)
    return chosen["epochs"], chosen["views"], candidates


def test_the_plan_trades_an_epoch_for_views_only_where_the_study_says_it_pays():
    # 6.5 min = 390 s: 360 s after start-up; 1 view: 3 epochs (60), 2 views: 3 (62), 6 views: 2 epochs (52.5).
    epochs, views, candidates = plan(6.5)
    assert (epochs, views) == (3, 2)
    assert [(c["views"], c["epochs"], c["expected_val_top1"]) for c in candidates] == [
        (1, 3, 60.0), (2, 3, 62.0), (6, 2, 52.5)]
    # 8 min = 480 s: 6 views still leave 3 epochs (30 + 300 + 120 = 450 s): 63 beats 2 views' 4 epochs (62.5).
    assert plan(8)[:2] == (3, 6)
    # The views asked for are the most the plan may use; a model without a study keeps its own views.
    assert plan(8, tta=True, tta_translate=False)[:2] == (4, 2)
    assert plan(8, tta=False)[:2] == (4, 1)
    assert plan(8, model="mlp")[:2] == (4, 1)


def test_the_plan_takes_the_variant_the_study_expects_to_score_higher():
    study = {"recipe": RECIPE, "no_noise": NO_NOISE}
    # 240 s, free finalising: 2 epochs with any views; the recipe interpolates to 50 / 51.5 / 52.5, no_noise
    # scores 55 / 56 / 56: no_noise with 2 views (the tie with 6 goes to fewer views).
    chosen, candidates = budget.choose_plan(make_config("cnn"), 240, 30.0, 100.0, lambda v: 0.0, study)
    assert (chosen["variant"], chosen["epochs"], chosen["views"], chosen["expected_val_top1"]) == ("no_noise", 2, 2, 56.0)
    # 1 epoch: before no_noise's first row, so only the recipe is a candidate.
    chosen, candidates = budget.choose_plan(make_config("cnn"), 140, 30.0, 100.0, lambda v: 0.0, study)
    assert chosen["variant"] == "recipe" and {c["variant"] for c in candidates} == {"recipe"}
    # 5 epochs: the recipe (63 / 63 / 64, its column made non-decreasing) beats no_noise's last row (63.5 with 6 views).
    chosen, _ = budget.choose_plan(make_config("cnn"), 540, 30.0, 100.0, lambda v: 0.0, study)
    assert (chosen["variant"], chosen["epochs"], chosen["views"]) == ("recipe", 5, 6)
    # A run that sets the option itself keeps it: no variant that changes it is a candidate.
    chosen, candidates = budget.choose_plan(make_config("cnn", noise=0.1), 240, 30.0, 100.0, lambda v: 0.0, study)
    assert {c["variant"] for c in candidates} == {"recipe"}
    planned = budget.planned_config(make_config("cnn"), {"planned_epochs": 2, "planned_views": 1,
                                                         "planned_variant": "no_noise"})
    assert (planned.epochs, planned.noise, planned.tta) == (2, 0.0, False)
    planned = budget.planned_config(make_config("cnn"), {"planned_epochs": 4, "planned_views": 6,
                                                         "planned_variant": "no_noise_linear"})
    assert (planned.epochs, planned.noise, planned.decay, planned.tta_translate) == (4, 0.0, "linear", True)
    # A run that sets --decay itself: the variants that change it are no candidates, the others still are.
    assert budget.variants_allowed(make_config("cnn", decay="linear"), budget_study.STUDY) == ["recipe", "no_noise"]


def test_the_start_line_names_the_options_of_the_variant_it_trains():
    plan = {"minutes": 45, "measured": {"train_s_per_epoch": 480.0, "val_s_per_epoch": 20.0},
            "planned": {"startup_s": 60.0, "variant": "no_noise_linear", "epochs": 2, "views": 6, "s_per_epoch": 500.0,
                        "finalise_s": 300.0, "wall_s": 1360.0}}
    line = budget.describe(plan)
    assert "the recipe with noise 0.0, decay linear: start-up 60 s + 2 epochs x 500.0 s (480.0 s training" in line
    assert line.endswith("finalising 300 s (6 views) = 1360 s planned")


@pytest.mark.parametrize("study", [STUDY, {"recipe": RECIPE, "no_noise": NO_NOISE}, budget_study.STUDY])
@pytest.mark.parametrize("finalise_per_view", [5.0, 60.0, 400.0])  # a fast machine to a slow one
def test_a_larger_budget_never_chooses_a_lower_expectation(study, finalise_per_view):
    expectations = []
    for minutes in range(1, 240):
        chosen, candidates = budget.choose_plan(make_config("cnn"), 60 * minutes, 30.0, 100.0,
                                                lambda v: finalise_per_view * v, study)
        assert chosen["expected_val_top1"] == max(c["expected_val_top1"] for c in candidates)
        expectations.append(chosen["expected_val_top1"])
    assert expectations == sorted(expectations)


def test_a_budgeted_cnn_trains_and_saves_the_views_it_chose(data_root, tmp_path):
    config = make_config("cnn", time_budget=0.1, batch_size=50, val_size=100, precision="float32",
                         model_args=dict(widths=(8, 8, 8), stem_width=8))
    record = fit.fit(config, data_dir=data_root, output_dir=tmp_path)
    timing = record["time_budget"]
    views, variant = timing["planned_views"], timing["planned_variant"]
    candidates = timing["choice"]["candidates"]
    chosen = [c for c in candidates if (c["views"], c["variant"]) == (views, variant)]
    assert len(chosen) == 1 and chosen[0]["epochs"] == record["epochs"] == timing["planned_epochs"]
    assert chosen[0]["expected_val_top1"] == max(c["expected_val_top1"] for c in candidates)
    assert sorted({c["views"] for c in candidates}) == [1, 2, 6]
    assert {c["variant"] for c in candidates} == set(timing["choice"]["variants"]) == set(budget_study.VARIANTS)
    assert (record["config"]["tta"], record["config"]["tta_translate"]) == (views > 1, views > 2)
    assert record["views"] == views
    # It trained with the options of the variant it chose (at 1 epoch: without pixel noise, with a linear decay).
    assert all(record["config"][k] == v for k, v in budget_study.VARIANTS[variant].items())
