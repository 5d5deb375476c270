"""Command line: python -m cifar_keras {fit,evaluate,calibrate,tune,export,predict,bench,report} ...
(see --help of each).

Each command has a small `add_<command>_parser` next to its `run_<command>` handler.
Training options come from the one run schema (config.RunConfig); Keras is imported
only by the handlers, so --help stays fast.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras.config import DEFAULTS, MODEL_NAMES
from cifar_keras.errors import UserError

# Every RunConfig field is a fit flag, except those given otherwise.
FIT_OPTIONS = [name for name in run_config.FIELDS if name not in ("model", "model_args")]
TUNE_OPTIONS = ["train_size", "val_size", "seed", "precision"]  # the rest is what the search varies


def positive(kind, message):
    """argparse `type`: a number of `kind` above zero, else `message`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value

    return parse


positive_int = positive(int, "must be a positive integer")


def json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_data_dir(parser):
    parser.add_argument("--data-dir", help="folder holding cifar-100-python/ or cifar-100-python.tar.gz "
                        "(default: $CIFAR100_DATA_DIR, else the Keras cache, else download)")


def command_line(argv):
    return "python -m cifar_keras " + shlex.join(argv)


# --- fit ---------------------------------------------------------------------------------------

def add_fit_parser(sub):
    parser = sub.add_parser(
        "fit", help="train a model, keep the best epoch by validation accuracy, test it once",
        description="Train MODEL on the training images minus a stratified validation split; keep the epoch with "
        "the best validation accuracy; evaluate it once on the test set; write OUTPUT_DIR/NAME.keras, NAME.json "
        "(run record) and NAME.log.csv. Rerun the same command to resume an interrupted run. Unset options take "
        "the tuned hyperparameters (--hparams), else the model's built-in recipe.")
    groups = run_config.add_groups(parser)
    groups["model"].add_argument("model", choices=MODEL_NAMES)
    groups["model"].add_argument("--hparams", help="tuned hyperparameters (default: tuning/MODEL/best_hparams.json "
                                 "if it exists; 'none' for the built-in recipe); flags still override them")
    groups["model"].add_argument("--model-args", type=json_object, metavar="JSON",
                                 help="builder arguments, e.g. '{\"widths\": [64, 256, 512], \"stem\": \"whiten\"}' "
                                 "(see models.py); they replace the recipe's and the tuned ones: '{}' builds the "
                                 "builder's defaults")
    add_data_dir(groups["data"])
    run_config.add_run_options(parser, groups, FIT_OPTIONS)
    groups["output"].add_argument("--output-dir", default="saved_models",
                                  help="where the model and records go (default: saved_models)")
    groups["output"].add_argument("--name", help="file name stem of the outputs (default: the model name)")
    groups["output"].add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard logs to DIR")
    parser.set_defaults(handler=run_fit)


def resolve_hparams(option, model):
    """(hparams, provenance) from --hparams: a file, 'none', or the tuned file `tune` wrote if any."""
    from cifar_keras import models

    path = option
    if path is None and Path(f"tuning/{model}/best_hparams.json").is_file():
        path = f"tuning/{model}/best_hparams.json"
    if path in (None, "none"):
        return None, None
    hparams, provenance = run_config.read_hparams(path, model)
    models.check_model_args(hparams["model_args"], model, path)
    return hparams, provenance


def run_fit(args, argv):
    import keras

    from cifar_keras import models, train

    hparams, provenance = resolve_hparams(args.hparams, args.model)
    model_args = args.model_args and models.check_model_args(args.model_args, args.model, "--model-args")
    config = run_config.make_config(args.model, hparams=hparams, model_args=model_args,
                                    **run_config.overrides(args, FIT_OPTIONS))
    callbacks = [keras.callbacks.TensorBoard(args.tensorboard)] if args.tensorboard else []
    record = train.fit(config, data_dir=args.data_dir, output_dir=args.output_dir, name=args.name,
                       command=command_line(argv), hparams=provenance, extra_callbacks=callbacks)
    test, val = record["test"], record["val"]
    scores = (f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  superclass {test['superclass']:.2f}%"
              if test else f"val top-1 {val['top1']:.2f}% (test set not used)")
    print(f"{record['name']}: {scores}  ({record['train_wall_time_s']:.0f} s training) -> {record['files']['model']}")


# --- evaluate ----------------------------------------------------------------------------------

def add_evaluate_parser(sub):
    parser = sub.add_parser("evaluate", help="test-set metrics of a saved .keras model",
                            description="Top-1, top-5 and superclass accuracy of a saved model, and how well its "
                            "probabilities are calibrated (ECE over 15 confidence bins, NLL, Brier score), on the "
                            "test set (default) or on the validation split that fit carves from the training set.")
    parser.add_argument("model_path")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    groups = {"data": parser}
    run_config.add_run_options(parser, groups, ["val_size", "seed"])
    parser.set_defaults(val_size=DEFAULTS.val_size, seed=DEFAULTS.seed)
    parser.add_argument("--output", help="also write the result as a JSON run record here")
    parser.add_argument("--report-dir", help="also write superclass-confusion, per-class-accuracy and example "
                        "figures here")
    add_data_dir(parser)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args, argv):
    from cifar_keras import data, models, records, runtime
    from cifar_keras.evaluate import evaluate_model

    model = models.load_keras_model(args.model_path)
    dataset = data.load(args.data_dir)
    split = dataset.test
    if args.split == "val":
        split = data.train_val_split(dataset.train, args.val_size, seed=args.seed)[1]
    result = evaluate_model(model, split, dataset.fine_to_coarse())
    record = {"kind": "evaluate", "model_path": str(args.model_path), "split": args.split,
              "command": command_line(argv), args.split: result, **runtime.environment()}
    if args.output:
        records.write(args.output, record)
    if args.report_dir:
        from cifar_keras.report import model_figures

        facts = model_figures(model, dataset, args.report_dir, split)
        print(f"figures: {', '.join(str(p) for p in facts['figures'].values())}", file=sys.stderr)
    print(json.dumps({args.split: result}, indent=2))


# --- calibrate ---------------------------------------------------------------------------------

def add_calibrate_parser(sub):
    parser = sub.add_parser(
        "calibrate", help="fold a temperature fitted on validation into a saved model (calibrated probabilities)",
        description="Fit one temperature T on the validation split that fit carves from the training set (the T that "
        "minimises its negative log-likelihood) and write MODEL_PATH with its logits divided by T before the softmax "
        "(a built-in Keras Rescaling layer named 'temperature'): the same predicted classes, calibrated "
        "probabilities. MODEL_PATH itself is left as it is. Writes the calibrated model and a JSON record of ECE "
        "(15 bins), NLL and Brier score before and after, on the validation split and the test set.")
    parser.add_argument("model_path")
    parser.add_argument("--output", help="calibrated model (default: NAME_calibrated.keras beside MODEL_PATH)")
    parser.add_argument("--record", help="JSON record (default: calibration/NAME.json beside MODEL_PATH)")
    parser.add_argument("--figure", help="also draw the test set's reliability diagram, before and after, to this "
                        "PNG file")
    run_config.add_run_options(parser, {"data": parser}, ["val_size", "seed"])
    parser.set_defaults(val_size=DEFAULTS.val_size, seed=DEFAULTS.seed)
    add_data_dir(parser)
    parser.set_defaults(handler=run_calibrate)


def run_calibrate(args, argv):
    from cifar_keras import calibrate, data, models, records, runtime

    source = Path(args.model_path)
    output = Path(args.output or source.with_name(f"{source.stem}_calibrated.keras"))
    record_path = Path(args.record or source.parent / "calibration" / f"{source.stem}.json")
    if output.suffix != ".keras":
        raise UserError(f"--output {output}: expected a .keras file name")
    if output.resolve() == source.resolve():
        raise UserError(f"--output {output}: would overwrite the model being calibrated; choose another name")
    model = models.load_keras_model(source)
    dataset = data.load(args.data_dir)
    val = data.train_val_split(dataset.train, args.val_size, seed=args.seed)[1]
    calibrated, result, test_logits = calibrate.calibrate(model, val, dataset.test)
    temperature = result["temperature"]
    if not calibrate.TEMPERATURE_RANGE[0] * 1.001 < temperature < calibrate.TEMPERATURE_RANGE[1] / 1.001:
        print(f"calibrate: warning: T = {temperature:.4g} is at the end of the searched range "
              f"{calibrate.TEMPERATURE_RANGE}", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    calibrated.save(output)
    previous = calibrate.temperature_of(model)
    record = {"kind": "calibrate", "model_path": str(source), "output": str(output), "command": command_line(argv),
              "temperature": result["temperature"], "temperature_before": previous, "bins": result["bins"],
              "val_size": args.val_size, "seed": args.seed, "val_images": len(val), "test_images": len(dataset.test),
              "val": result["val"], "test": result["test"], "code": records.code_version(), **runtime.environment()}
    record = calibrate.rounded(record)
    if args.figure:
        from cifar_keras.plots import reliability_diagram

        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        reliability_diagram({"before": calibrate.probabilities(test_logits),
                             f"after (T = {temperature:.2f})": calibrate.probabilities(test_logits, temperature)},
                            dataset.test.fine, args.figure, f"{source.name}: reliability on the test set "
                            f"({len(dataset.test)} images)")
        record["figure"] = str(args.figure)
    records.write(record_path, record)
    test = record["test"]
    print(f"T = {temperature:.4f}; test ECE {test['before']['ece']:.4f} -> {test['after']['ece']:.4f}, "
          f"NLL {test['before']['nll']:.4f} -> {test['after']['nll']:.4f}, Brier {test['before']['brier']:.4f} -> "
          f"{test['after']['brier']:.4f} -> {output} (record {record_path})")


# --- tune --------------------------------------------------------------------------------------

def budget(text):
    return text if text == "recipe" else positive(float, "must be 'recipe' or a positive number of minutes")(text)


def add_tune_parser(sub):
    parser = sub.add_parser(
        "tune", help="KerasTuner search; the best trial goes to tuning/MODEL/best_hparams.json",
        description="Search MODEL's hyperparameter space (see models.py) with KerasTuner, scored by validation "
        "accuracy on the split carved from the training set (never the test set). Writes tuning/MODEL/trials.json, "
        "best_hparams.json (which `fit MODEL` then uses) and search.json. Rerun the same command to continue an "
        "interrupted search.")
    parser.add_argument("model", choices=MODEL_NAMES)
    parser.add_argument("--tuner", choices=("random", "hyperband", "bayesian"), default="hyperband")
    parser.add_argument("--max-trials", type=positive_int, default=10,
                        help="number of trials (random/bayesian), or a cap on them (hyperband) (default 10)")
    parser.add_argument("--epochs", type=positive_int, default=3,
                        help="epochs per trial for random/bayesian (default 3)")
    parser.add_argument("--max-epochs", type=positive_int, default=9,
                        help="largest epoch budget of a hyperband trial (default 9)")
    parser.add_argument("--budget", type=budget,
                        help="cost-aware search (random/bayesian): each trial measures its training speed and trains "
                        "as many epochs as a full run could in MINUTES, or in the time the built-in recipe takes on "
                        "this machine ('recipe'), on its subset's share of that time; the best trial's epochs go "
                        "into best_hparams.json (default: off, every trial trains --epochs)")
    run_config.add_run_options(parser, {"data": parser, "hardware": parser}, TUNE_OPTIONS)
    parser.set_defaults(train_size=10_000)  # a search trains many models: on a subset by default
    parser.add_argument("--tuning-dir", default="tuning", help="folder of the search results (default: tuning)")
    add_data_dir(parser)
    parser.set_defaults(handler=run_tune)


def run_tune(args, argv):
    from cifar_keras.tune import tune

    options = {k: v for k, v in run_config.overrides(args, TUNE_OPTIONS).items() if v is not None}
    best, trials = tune(args.model, kind=args.tuner, max_trials=args.max_trials, epochs=args.epochs,
                        max_epochs=args.max_epochs, budget=args.budget, data_dir=args.data_dir,
                        tuning_dir=args.tuning_dir, command=command_line(argv), **options)
    print(f"{len(trials)} trials; best validation accuracy {100 * best['val_accuracy']:.2f}% -> "
          f"{Path(args.tuning_dir) / args.model / 'best_hparams.json'}")


# --- export and predict ------------------------------------------------------------------------

def add_export_parser(sub):
    parser = sub.add_parser(
        "export", help="write a .keras model as a SavedModel for TF Serving",
        description="Write MODEL_PATH as a SavedModel in TF Serving's layout ROOT/NAME/VERSION/. Signature "
        "serving_default: input 'pixels' float32 (None, 32, 32, 3) raw RGB 0-255; outputs 'probabilities' (None, "
        "100), 'top5_classes' (None, 5) and 'top5_probabilities' (None, 5). Class names go to "
        "VERSION/assets.extra/labels.txt.")
    parser.add_argument("model_path")
    parser.add_argument("--name", help="model name in TF Serving (default: the file's stem, e.g. cnn)")
    parser.add_argument("--version", type=positive_int,
                        help="version number (default: one more than the highest present)")
    parser.add_argument("--root", default="saved_models", help="folder holding NAME/VERSION/ (default: saved_models)")
    parser.set_defaults(handler=run_export)


def run_export(args, argv):
    from cifar_keras import models
    from cifar_keras.export import export_model

    model = models.load_keras_model(args.model_path)
    target = export_model(model, args.root, args.name or Path(args.model_path).stem, args.version)
    print(f"exported {args.model_path} -> {target}")


def add_predict_parser(sub):
    parser = sub.add_parser(
        "predict", help="top-5 classes of image files",
        description="Print the top-5 CIFAR-100 classes of each image (PNG, JPEG, BMP, ... any size; resized to "
        "32x32, converted to RGB). MODEL is a .keras file or a SavedModel folder. Unreadable images are reported "
        "one line each; the others are still predicted.")
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run_predict)


def run_predict(args, argv):
    from cifar_keras.predict import predict_files

    results, errors = predict_files(args.model, args.images)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["image"])
            for rank, entry in enumerate(result["top"], start=1):
                print(f"  {rank}. {entry['class']:<15} {100 * entry['probability']:6.2f} %")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


# --- bench and report --------------------------------------------------------------------------

def add_bench_parser(sub):
    parser = sub.add_parser("bench", help="CNN training throughput per Keras backend and precision",
                            description="Time fit() steps of MODEL on each Keras backend with and without mixed "
                            "precision, one subprocess each, side by side; write the run record OUTPUT.")
    parser.add_argument("model", nargs="?", default="cnn", choices=MODEL_NAMES)
    parser.add_argument("--backends", default="tensorflow,jax,torch", help="comma-separated (default: all three)")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma-separated (default: float32,bfloat16)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    parser.add_argument("--steps", type=positive_int, default=20, help="timed training steps (default 20)")
    parser.add_argument("--warmup", type=positive_int, default=3,
                        help="untimed steps first, for compilation (default 3)")
    parser.add_argument("--output", default="saved_models/bench.json",
                        help="run record (default: saved_models/bench.json)")
    parser.set_defaults(handler=run_bench)


def run_bench(args, argv):
    from cifar_keras import bench, records, runtime

    backends = [b for b in args.backends.split(",") if b]
    precisions = [p for p in args.precisions.split(",") if p]
    for name, values, allowed in (("--backends", backends, bench.BACKENDS),
                                  ("--precisions", precisions, bench.PRECISIONS)):
        wrong = sorted(set(values) - set(allowed))
        if wrong or not values:
            raise UserError(f"{name}: unknown {', '.join(wrong) or 'empty list'}; choose from {', '.join(allowed)}")
    results = bench.run(args.model, backends, precisions, args.batch_size, args.steps, args.warmup)
    records.write(args.output, {"kind": "bench", "model": args.model, "command": command_line(argv),
                                "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                                "results": results, **runtime.environment(), "code": records.code_version()})
    for r in results:
        speed = f"{r['train_images_per_s']:8.1f} img/s" if "error" not in r else f"failed: {r['error']}"
        print(f"{r['backend']:<11} {r['precision']:<15} {speed}")
    return 1 if any("error" in r for r in results) else 0


def add_report_parser(sub):
    parser = sub.add_parser("report", help="regenerate README's results section from the run records",
                            description="Rewrite the results section between README's markers from the fit run "
                            "records (*.json) in --records; the rest of README is left as it is.")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--records", default="saved_models", help="folder of run records (default: saved_models)")
    parser.add_argument("--figures", default="docs/figures", help="where the PNG figures go (default: docs/figures)")
    parser.add_argument("--no-figures", action="store_true", help="only the tables (no data set or model needed)")
    parser.add_argument("--model", default="cnn", help="run whose model gets the test-set analysis (default: cnn)")
    add_data_dir(parser)
    parser.set_defaults(handler=run_report)


def run_report(args, argv):
    from cifar_keras import report

    analysis = None
    if not args.no_figures:
        analysis = report.write_analysis(args.records, args.figures, Path(args.readme).parent, args.data_dir,
                                         args.model)
    changed = report.update_readme(args.readme, args.records, analysis)
    print(f"{args.readme}: results table {'updated' if changed else 'already up to date'}")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cifar_keras", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_fit_parser, add_evaluate_parser, add_calibrate_parser, add_tune_parser, add_export_parser,
                add_predict_parser, add_bench_parser, add_report_parser):
        add(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        from cifar_keras import runtime

        runtime.import_tensorflow_quietly()
        return args.handler(args, argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
