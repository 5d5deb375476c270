"""The committed models score what their run records say, on the real test set."""

import json
from pathlib import Path

import keras
import pytest

from cifar_keras import data
from cifar_keras.evaluation.metrics import evaluate_model
from conftest import REAL_DATA

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


@pytest.fixture(scope="module")
def real_data():
    if not REAL_DATA.is_dir():
        pytest.skip("real CIFAR-100 not beside the repo")
    return data.load(REAL_DATA)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_committed_model_matches_its_run_record(name, real_data):
    if not (SAVED / f"{name}.keras").exists():
        pytest.skip(f"saved_models/{name}.keras not trained yet")
    record = json.loads((SAVED / f"{name}.json").read_text())
    model = keras.saving.load_model(SAVED / f"{name}.keras")
    result = evaluate_model(model, real_data.test, real_data.fine_to_coarse())
    assert result["top1"] == pytest.approx(record["test"]["top1"], abs=0.5)
    assert result["superclass"] == pytest.approx(record["test"]["superclass"], abs=0.5)
