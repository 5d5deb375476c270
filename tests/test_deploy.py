"""export --format saved_model|onnx|litert|openvino (int8 too) of what `fit cnn` saves, each run in its own runtime
in a fresh process that imports nothing of cifar_keras, and export's own check of each file (verify.py); predict
and evaluate on every export; bench --inference; the one-line error when a runtime is missing. Formats other than
saved_model need the deploy extra (CI installs it)."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cifar_keras import cli
from cifar_keras import models
from cifar_keras.data.classes import COARSE_NAMES, FINE_NAMES

DEPLOY = ["tf2onnx", "onnxruntime", "ai_edge_litert", "openvino", "nncf"]
missing = [name for name in DEPLOY if importlib.util.find_spec(name) is None]
needs_deploy = pytest.mark.skipif(bool(missing), reason=f"deploy extra not installed ({', '.join(missing)}): "
                                  "pip install -e '.[deploy]'")

# argv: model, pixels.npy, out.npy. Each imports numpy and one runtime, nothing else.
RUNTIME_SCRIPTS = {
    "saved_model": """
        import tensorflow as tf
        out = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](pixels=tf.constant(pixels))
        probabilities = out["probabilities"].numpy()
    """,
    "onnx": """
        import onnxruntime
        session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["pixels"]
        assert [o.name for o in session.get_outputs()] == ["probabilities"]
        probabilities = session.run(None, {"pixels": pixels})[0]
    """,
    "litert": """
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_path=sys.argv[1])
        assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["pixels"],
                                                                        "outputs": ["probabilities"]}}
        probabilities = interpreter.get_signature_runner()(pixels=pixels)["probabilities"]
    """,
    "openvino": """
        import openvino
        model = openvino.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        assert model.input(0).get_names() == {"pixels"} and "probabilities" in model.output(0).get_names()
        probabilities = model(pixels)[0]
    """,
}
MODEL_IN_FOLDER = {"saved_model": "", "onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
FORMATS = list(MODEL_IN_FOLDER)
INT8_FORMATS = ["litert", "openvino"]


def run_alone(fmt, model_path, pixels, tmp_path):
    """Probabilities of `model_path` computed by its runtime in a fresh interpreter, which must not have
    imported cifar_keras (nor TensorFlow, but for the SavedModel)."""
    script = "import sys\nimport numpy as np\npixels = np.load(sys.argv[2])\n" + textwrap.dedent(
        RUNTIME_SCRIPTS[fmt]) + textwrap.dedent(f"""
        assert "cifar_keras" not in sys.modules
        assert {fmt == "saved_model"} or "tensorflow" not in sys.modules
        np.save(sys.argv[3], probabilities)
    """)
    np.save(tmp_path / "pixels.npy", pixels)
    subprocess.run([sys.executable, "-c", script, str(model_path), str(tmp_path / "pixels.npy"),
                    str(tmp_path / "out.npy")], check=True, capture_output=True, cwd=tmp_path)
    return np.load(tmp_path / "out.npy")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """What `fit cnn` saves, small: a frozen 2x2 whitening conv, and the net called on 6 views of each image
    (Permute, Dense on 4-D tensors, Average)."""
    model = models.cnn(widths=(8, 16, 16), stem_width=8, stem="whiten", dirac=True)
    models.whiten_from_data(model, np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3)).astype(np.uint8))
    for layer in model.layers:  # non-trivial BatchNorm statistics, so a wrong inference mode would show
        if "bn" in layer.name:
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, np.float32))
    # Larger logits: an untrained net's near-uniform probabilities would make top-1 a matter of rounding.
    logits = model.get_layer("logits")
    logits.kernel.assign(logits.kernel * 20.0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    models.with_tta(model, translate=True).save(path)
    return path


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(keras_file, pixels):
    import keras

    return keras.saving.load_model(keras_file).predict(pixels, verbose=0)


@pytest.fixture(scope="module")
def exports(keras_file, data_root, tmp_path_factory):
    """root/FORMAT/tiny/1/ for every format whose tools are installed, and root/single/FORMAT/tiny/1/ for litert
    and openvino: the single-view net (--views 1) with its int8 model. Each file checked by export itself on 40
    test images, the checks recorded in root/FORMAT.json and root/single/FORMAT.json."""
    root = tmp_path_factory.mktemp("exports")
    checked = ["--data-dir", str(data_root), "--verify-images", "40"]
    for fmt in FORMATS if not missing else ["saved_model"]:
        assert cli.main(["export", str(keras_file), "--format", fmt, "--root", str(root / fmt), *checked,
                         "--record", str(root / f"{fmt}.json")]) == 0
    for fmt in INT8_FORMATS if not missing else []:
        # int8 of the 6-view net quantises each view's softmax: its probabilities no longer sum to 1.
        assert cli.main(["export", str(keras_file), "--format", fmt, "--root", str(root / "single" / fmt), *checked,
                         "--views", "1", "--int8", "--calibration-images", "100", "--record",
                         str(root / "single" / f"{fmt}.json")]) == 0
    return root


def folder(exports, fmt):
    return exports / fmt / "tiny" / "1"


def int8_folder(exports, fmt):
    return exports / "single" / fmt / "tiny" / "1"


@needs_deploy
def test_layout_of_each_format(exports):
    assert sorted(p.name for p in folder(exports, "onnx").iterdir()) == ["labels.txt", "model.onnx"]
    assert sorted(p.name for p in folder(exports, "litert").iterdir()) == ["labels.txt", "model.tflite"]
    assert sorted(p.name for p in folder(exports, "openvino").iterdir()) == ["labels.txt", "model.bin", "model.xml"]
    assert sorted(p.name for p in int8_folder(exports, "litert").iterdir()) == ["labels.txt", "model.tflite",
                                                                                "model_int8.tflite"]
    assert sorted(p.name for p in int8_folder(exports, "openvino").iterdir()) == [
        "labels.txt", "model.bin", "model.xml", "model_int8.bin", "model_int8.xml"]
    for fmt in ("onnx", "litert", "openvino"):
        assert (folder(exports, fmt) / "labels.txt").read_text().splitlines() == list(FINE_NAMES)
    assert (folder(exports, "saved_model") / "assets.extra" / "labels.txt").is_file()


@needs_deploy
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips_in_its_own_runtime(fmt, exports, pixels, expected, tmp_path):
    probabilities = run_alone(fmt, folder(exports, fmt) / MODEL_IN_FOLDER[fmt], pixels, tmp_path)
    assert probabilities.shape == (len(pixels), 100) and probabilities.dtype == np.float32
    assert np.allclose(probabilities, expected, atol=1e-5)
    assert (probabilities.argmax(1) == expected.argmax(1)).all()


def test_savedmodel_stores_each_variable_once(exports, keras_file):
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(keras_file)
    stored = [name for name, _ in tf.train.list_variables(str(folder(exports, "saved_model") / "variables" /
                                                                "variables")) if name.endswith("VARIABLE_VALUE")]
    assert len(stored) == len(model.variables)
    reloaded = tf.saved_model.load(str(folder(exports, "saved_model")))
    assert len(reloaded.variables) == len(model.variables)
    assert len(reloaded.trainable_variables) == len(model.trainable_variables)


@needs_deploy
@pytest.mark.parametrize("fmt, name", [("litert", "model_int8.tflite"), ("openvino", "model_int8.xml")])
def test_int8_export_is_quantised_and_keeps_the_float_contract(fmt, name, exports, data_root, tmp_path):
    path = int8_folder(exports, fmt) / name
    float_size = (int8_folder(exports, fmt) / MODEL_IN_FOLDER[fmt]).stat().st_size
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        assert interpreter.get_input_details()[0]["dtype"] == np.float32
        assert any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
        assert path.stat().st_size < float_size
    else:
        text = path.read_text()
        assert "FakeQuantize" in text or 'element_type="i8"' in text or 'element_type="u8"' in text
        assert path.with_suffix(".bin").stat().st_size < int8_folder(exports, fmt).joinpath("model.bin").stat().st_size
    # Test images, like the training images the int8 model was calibrated on (random pixels lie outside the
    # calibrated ranges).
    from cifar_keras import data

    pixels = data.load(data_root).test.images[:6].astype(np.float32)
    probabilities = run_alone(fmt, path, pixels, tmp_path)
    assert probabilities.shape == (len(pixels), 100) and probabilities.dtype == np.float32
    # LiteRT quantises the softmax output too, in steps of 1/256: each of the 100 is off by up to half a step.
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=100 * 0.5 / 256 if fmt == "litert" else 0.05)


@needs_deploy
def test_predict_and_evaluate_accept_every_format(exports, keras_file, data_root, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(1)
    images = []
    for i in range(3):
        images.append(tmp_path / f"image{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images[-1])

    def predict(model):
        assert cli.main(["predict", str(model), *map(str, images), "--json"]) == 0
        return [[entry["index"] for entry in result["top"]] for result in json.loads(capsys.readouterr().out)]

    def evaluate(model):
        assert cli.main(["evaluate", str(model), "--data-dir", str(data_root), "--output",
                         str(tmp_path / "evaluate.json")]) == 0
        capsys.readouterr()
        return json.loads((tmp_path / "evaluate.json").read_text())

    reference, reference_scores = predict(keras_file), evaluate(keras_file)["test"]
    paths = [folder(exports, fmt) for fmt in FORMATS]  # folders; files below
    paths += [folder(exports, "onnx") / "model.onnx", folder(exports, "openvino") / "model.xml"]
    for path in paths:
        assert [top[0] for top in predict(path)] == [top[0] for top in reference], path
        record = evaluate(path)
        assert record["test"]["top1"] == reference_scores["top1"], path
        assert record["format"] in FORMATS and record["precision"] == "float32"
    for path in (int8_folder(exports, "litert") / "model_int8.tflite",
                 int8_folder(exports, "openvino") / "model_int8.xml"):
        assert len(predict(path)) == len(images)
        assert evaluate(path)["precision"] == "int8"


@needs_deploy
def test_export_verifies_in_a_fresh_process(keras_file, tmp_path, capsys):
    assert cli.main(["export", str(keras_file), "--format", "onnx", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "onnxruntime" in out and "fresh process" in out and "100.0 %" in out


RUNTIME_NAMES = {"saved_model": "tensorflow ", "onnx": "onnxruntime ", "litert": "ai-edge-litert ",
                 "openvino": "openvino "}


@pytest.mark.parametrize("fmt, views", [(fmt, 6) for fmt in FORMATS] + [(fmt, 1) for fmt in INT8_FORMATS])
def test_export_checks_each_file_in_its_runtime_and_records_it(fmt, views, exports):
    if fmt != "saved_model" and missing:
        pytest.skip("deploy extra not installed")
    record = json.loads((exports / ("single" if views == 1 else "") / f"{fmt}.json").read_text())
    assert record["kind"] == "export" and record["views"] == views
    assert record["verified_on"] == "the first 40 test images"
    files = {"saved_model": [("", "float32")], "onnx": [("model.onnx", "float32")],
             "litert": [("model.tflite", "float32"), ("model_int8.tflite", "int8")],
             "openvino": [("model.xml", "float32"), ("model_int8.xml", "int8")]}[fmt]
    files = files if views == 1 else files[:1]
    where = int8_folder(exports, fmt) if views == 1 else folder(exports, fmt)
    checks = record["verification"]
    assert [(c["path"], c["precision"]) for c in checks] == [(str(where / name) if name else str(where), precision)
                                                             for name, precision in files]
    for check in checks:
        assert check["format"] == fmt and check["runtime"].startswith(RUNTIME_NAMES[fmt]) and check["images"] == 40
        if check["precision"] == "float32":
            assert check["top1_agreement"] == 1.0 and 0 <= check["max_abs_diff"] < 1e-4
        else:
            assert 0 <= check["top1_agreement"] <= 1 and check["max_abs_diff"] >= 0


@needs_deploy
def test_verify_module_runs_a_model_of_its_format_with_its_runtime_alone(exports, tmp_path, monkeypatch):
    from cifar_keras.deploy import verify
    from cifar_keras.errors import UserError

    np.save(tmp_path / "pixels.npy", np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(UserError, match="format onnx, not litert"):
        verify.main(["litert", str(folder(exports, "onnx") / "model.onnx"), str(tmp_path / "pixels.npy"),
                     str(tmp_path / "out.npy")])
    for name in ("tensorflow", "keras", "jax", "torch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert verify.foreign_frameworks("onnx") == []
    monkeypatch.setitem(sys.modules, "keras", sys)  # stands for an imported Keras
    assert verify.foreign_frameworks("openvino") == ["keras"]
    assert verify.foreign_frameworks("saved_model") == []  # TensorFlow imports Keras itself


def test_labels_follow_the_models_classes(tmp_path, capsys):
    models.mlp(hidden=(8,), num_classes=20).save(tmp_path / "coarse.keras")
    assert cli.main(["export", str(tmp_path / "coarse.keras"), "--root", str(tmp_path), "--no-verify"]) == 0
    labels = tmp_path / "coarse" / "1" / "assets.extra" / "labels.txt"
    assert labels.read_text().splitlines() == list(COARSE_NAMES)
    models.mlp(hidden=(8,), num_classes=10).save(tmp_path / "ten.keras")
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "ten.keras"), "--root", str(tmp_path), "--no-verify"]) == 2
    assert "10 output classes" in capsys.readouterr().err and not (tmp_path / "ten").exists()


@pytest.mark.parametrize("count", [100, 150])
def test_calibration_images_are_training_images_stratified_over_the_classes(count, data_root):
    from cifar_keras import data
    from cifar_keras.deploy.export import calibration_images

    train, test = data.load(data_root).train, data.load(data_root).test
    images = calibration_images(data_root, count)
    assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
    found = [np.flatnonzero((train.images == image).all(axis=(1, 2, 3))) for image in images]
    assert all(len(rows) == 1 for rows in found)  # each a training image, none twice
    assert len({int(rows[0]) for rows in found}) == count
    assert not any((test.images == image).all(axis=(1, 2, 3)).any() for image in images)
    per_class = np.bincount(train.fine[[int(rows[0]) for rows in found]], minlength=100)
    assert per_class.min() == 1 and per_class.max() == -(-count // 100)  # 100: one each; 150: one or two


@pytest.mark.parametrize("module, argv, message", [
    ("onnxruntime", ["predict", "{onnx}", "{image}"], "loading model.onnx needs onnxruntime"),
    ("ai_edge_litert.interpreter", ["predict", "{litert}", "{image}"], "loading model.tflite needs ai-edge-litert"),
    ("openvino", ["evaluate", "{openvino}"], "loading model.xml needs openvino"),
    ("tf2onnx", ["export", "{keras}", "--format", "onnx", "--root", "{tmp}"], "onnx export needs tf2onnx"),
    ("ai_edge_litert", ["export", "{keras}", "--format", "litert", "--root", "{tmp}"],
     "verifying the litert export needs ai-edge-litert"),
    ("nncf", ["export", "{keras}", "--format", "openvino", "--int8", "--root", "{tmp}", "--data-dir", "{data}"],
     "openvino int8 export needs nncf"),
    ("onnxruntime", ["bench", "--inference", "--model-file", "{keras}", "--formats", "onnx"],
     "bench --inference of onnx needs onnxruntime"),
])
def test_missing_runtime_is_a_one_line_error(module, argv, message, keras_file, data_root, tmp_path, monkeypatch,
                                             capsys):
    model_files = {"onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
    for fmt, name in model_files.items():
        (tmp_path / fmt).mkdir()
        (tmp_path / fmt / name).write_bytes(b"not read: the runtime is missing")
    (tmp_path / "image.png").write_bytes(b"")
    values = {"keras": keras_file, "tmp": tmp_path / "out", "data": data_root, "image": tmp_path / "image.png",
              **{fmt: tmp_path / fmt for fmt in model_files}}
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    if "." in module:
        monkeypatch.setitem(sys.modules, module.split(".")[0], None)
    assert cli.main([arg.format(**values) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}: pip install -e '.[deploy]'\n"
    assert not (tmp_path / "out" / "tiny" / "1").exists()  # a failed export leaves no version behind


def test_int8_only_where_supported(keras_file, tmp_path, capsys):
    assert cli.main(["export", str(keras_file), "--format", "onnx", "--int8", "--root", str(tmp_path)]) == 2
    assert "--int8 is available for litert and openvino, not onnx" in capsys.readouterr().err


@needs_deploy
@pytest.mark.parametrize("bf16", [True, False])
def test_bench_inference_times_every_format_and_each_precision_it_has(bf16):
    from cifar_keras.reporting.bench import inference_rows

    formats = ["keras", "saved_model", "onnx", "litert", "openvino"]
    expected = [("keras", "float32"), ("saved_model", "float32"), ("onnx", "float32"), ("litert", "float32"),
                ("litert", "int8"), ("openvino", "float32"), ("openvino", "int8")] + [("openvino", "bfloat16")] * bf16
    assert inference_rows(formats, ["float32", "int8", "bfloat16"], bf16) == expected


def test_bench_inference_times_and_records_each_row(keras_file, data_root, tmp_path, capsys):
    """End to end on four rows (one subprocess each: every format's own runtime is exercised by the export tests
    above): an export and its int8 model, each as the single-view net and as the 6-view model it was saved as."""
    if missing:
        pytest.skip("deploy extra not installed")
    out = tmp_path / "inference.json"
    argv = ["bench", "--inference", "--model-file", str(keras_file), "--data-dir", str(data_root),
            "--formats", "litert", "--precisions", "float32,int8", "--views", "1,6",
            "--calibration-images", "100", "--batch-size", "8", "--steps", "1", "--warmup", "1", "--latency-runs",
            "3", "--output", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["kind"] == "bench_inference" and record["command"].startswith("python -m cifar_keras bench")
    assert "cpu_features" in record["hardware"]
    rows = [(r["views"], r["format"], r["precision"]) for r in record["results"]]
    assert rows == [(1, "litert", "float32"), (1, "litert", "int8"), (6, "litert", "float32"), (6, "litert", "int8")]
    for r in record["results"]:
        assert r["latency_ms_p99"] >= r["latency_ms_median"] > 0 and r["throughput_images_per_s"] > 0, r
        assert r["size_mb"] > 0
    assert printed.count("\n| ") == len(rows) + 1  # header and one line per row
    assert "\n| 1 | litert | " in printed and "\n| 6 | litert | " in printed


def test_openvino_bfloat16_is_not_offered_under_an_avx2_limit(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (a stand-in for an AVX2-only CPU) leaves OpenVINO no bfloat16 kernels to load."""
    from cifar_keras.deploy import runtimes

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtimes.openvino_bf16_available() is False
