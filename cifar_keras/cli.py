"""Command line: python -m cifar_keras {fit,evaluate,tune,export,predict,bench,report} ... (see --help of each)."""

import argparse
import json
import shlex
import sys
from pathlib import Path

from cifar_keras.errors import UserError

MODEL_NAMES = ("mlp", "cnn")  # kept in step with models.MODELS by a test; avoids importing keras for --help


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def budget(text):
    if text == "recipe":
        return text
    try:
        value = float(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 'recipe' or a positive number of minutes, got {text!r}")
    return value


def add_data_dir(parser):
    parser.add_argument("--data-dir", help="folder holding cifar-100-python/ or cifar-100-python.tar.gz "
                        "(default: $CIFAR100_DATA_DIR, else the Keras cache, else download)")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cifar_keras", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model, keep the best epoch by validation accuracy, test it once",
                         description="Train MODEL on the training images minus a stratified validation split; keep "
                         "the epoch with the best validation accuracy; evaluate it once on the test set; write "
                         "OUTPUT_DIR/NAME.keras, NAME.json (run record) and NAME.log.csv. Rerun with the same "
                         "output dir to resume an interrupted run. Unset options take the model's default recipe.")
    fit.add_argument("model", choices=MODEL_NAMES)
    fit.add_argument("--epochs", type=positive_int)
    fit.add_argument("--batch-size", type=positive_int)
    fit.add_argument("--lr", "--learning-rate", dest="learning_rate", type=non_negative_float, help="peak learning rate")
    fit.add_argument("--weight-decay", type=non_negative_float)
    fit.add_argument("--label-smoothing", type=non_negative_float)
    fit.add_argument("--warmup-epochs", type=non_negative_float)
    fit.add_argument("--crop-pad", type=int, help="random-crop padding in pixels (0: no crop)")
    fit.add_argument("--cutout", dest="cutout_size", type=int, help="cutout square size in pixels (0: off)")
    fit.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no horizontal flips")
    fit.add_argument("--tta", dest="tta", action=argparse.BooleanOptionalAction, default=None,
                     help="save the model averaged over each image and its mirror (flip test-time augmentation; default: off)")
    fit.add_argument("--seed", type=int)
    fit.add_argument("--train-size", type=positive_int, help="train on a stratified subset of N images")
    fit.add_argument("--val-size", type=positive_int, help="validation images carved from train (default 5000)")
    fit.add_argument("--patience", type=int, help="stop after N epochs without validation gain (default: off)")
    fit.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                     help="auto (default): bfloat16 on CPUs with AMX, float16 on GPUs, else float32")
    fit.add_argument("--hparams", help="tuned hyperparameters (default: tuning/MODEL/best_hparams.json if it "
                     "exists; 'none' for the built-in recipe); flags still override them")
    fit.add_argument("--distribute", choices=("none", "mirrored"),
                     help="mirrored: synchronous data parallelism over this machine's devices (TensorFlow: "
                     "MirroredStrategy over the GPUs; JAX: DataParallel); batch size and learning rate are per "
                     "replica and scale with the replica count (default: none)")
    fit.add_argument("--no-test", dest="test_set", action="store_false", default=None,
                     help="judge on validation only and leave the test set unseen (ablations, recipe studies)")
    fit.add_argument("--output-dir", default="saved_models", help="where the model and records go (default: saved_models)")
    fit.add_argument("--name", help="file name stem of the outputs (default: the model name)")
    add_data_dir(fit)

    ev = sub.add_parser("evaluate", help="test-set metrics of a saved .keras model",
                        description="Top-1, top-5 and superclass accuracy of a saved model, on the test set "
                        "(default) or on the validation split.")
    ev.add_argument("model_path")
    ev.add_argument("--split", choices=("test", "val"), default="test")
    ev.add_argument("--val-size", type=positive_int, default=5000)
    ev.add_argument("--seed", type=int, default=0, help="seed of the validation split (as in fit)")
    ev.add_argument("--output", help="also write the result as a JSON run record here")
    ev.add_argument("--report-dir", help="also write superclass-confusion, per-class-accuracy and example figures here")
    add_data_dir(ev)

    exp = sub.add_parser("export", help="write a .keras model as a SavedModel for TF Serving",
                         description="Write MODEL_PATH as a SavedModel in TF Serving's layout ROOT/NAME/VERSION/. "
                         "Signature serving_default: input 'pixels' float32 (None, 32, 32, 3) raw RGB 0-255; outputs "
                         "'probabilities' (None, 100), 'top5_classes' (None, 5) and 'top5_probabilities' (None, 5). "
                         "Class names go to VERSION/assets.extra/labels.txt.")
    exp.add_argument("model_path")
    exp.add_argument("--name", help="model name in TF Serving (default: the file's stem, e.g. cnn)")
    exp.add_argument("--version", type=positive_int, help="version number (default: one more than the highest present)")
    exp.add_argument("--root", default="saved_models", help="folder holding NAME/VERSION/ (default: saved_models)")

    pred = sub.add_parser("predict", help="top-5 classes of image files",
                          description="Print the top-5 CIFAR-100 classes of each image (PNG, JPEG, BMP, ... any "
                          "size; resized to 32x32, converted to RGB). MODEL is a .keras file or a SavedModel folder. "
                          "Unreadable images are reported one line each; the others are still predicted.")
    pred.add_argument("model")
    pred.add_argument("images", nargs="+")
    pred.add_argument("--json", action="store_true", help="machine-readable output")

    tune = sub.add_parser("tune", help="KerasTuner search; the best trial goes to tuning/MODEL/best_hparams.json",
                          description="Search MODEL's hyperparameter space (see models.py) with KerasTuner, scored "
                          "by validation accuracy on the split carved from the training set (never the test set). "
                          "Writes tuning/MODEL/trials.json, best_hparams.json (which `fit MODEL` then uses) and "
                          "search.json. Rerun the same command to continue an interrupted search.")
    tune.add_argument("model", choices=MODEL_NAMES)
    tune.add_argument("--tuner", choices=("random", "hyperband", "bayesian"), default="hyperband")
    tune.add_argument("--max-trials", type=positive_int, default=10, help="number of trials (random/bayesian), or a cap on them (hyperband) (default 10)")
    tune.add_argument("--epochs", type=positive_int, default=3, help="epochs per trial for random/bayesian (default 3)")
    tune.add_argument("--max-epochs", type=positive_int, default=9, help="largest epoch budget of a hyperband trial (default 9)")
    tune.add_argument("--train-size", type=positive_int, default=10_000,
                      help="search on a stratified subset of N training images (default 10000)")
    tune.add_argument("--val-size", type=positive_int, default=5000)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    tune.add_argument("--budget", type=budget,
                      help="cost-aware search (random/bayesian): each trial measures its training speed and trains "
                      "as many epochs as a full run could in MINUTES, or in the time the built-in recipe takes on "
                      "this machine ('recipe'), on its subset's share of that time; the best trial's epochs go "
                      "into best_hparams.json (default: off, every trial trains --epochs)")
    tune.add_argument("--tuning-dir", default="tuning", help="folder of the search results (default: tuning)")
    add_data_dir(tune)

    bench = sub.add_parser("bench", help="CNN training throughput per Keras backend and precision",
                           description="Time fit() steps of MODEL on each Keras backend with and without mixed "
                           "precision, one subprocess each, side by side; write the run record OUTPUT.")
    bench.add_argument("model", nargs="?", default="cnn", choices=MODEL_NAMES)
    bench.add_argument("--backends", default="tensorflow,jax,torch", help="comma-separated (default: all three)")
    bench.add_argument("--precisions", default="float32,bfloat16", help="comma-separated (default: float32,bfloat16)")
    bench.add_argument("--batch-size", type=positive_int, default=256)
    bench.add_argument("--steps", type=positive_int, default=20, help="timed training steps (default 20)")
    bench.add_argument("--warmup", type=positive_int, default=3, help="untimed steps first, for compilation (default 3)")
    bench.add_argument("--output", default="saved_models/bench.json", help="run record (default: saved_models/bench.json)")

    rep = sub.add_parser("report", help="regenerate README's results table from the run records",
                         description="Rewrite the results table between README's markers from the fit run records "
                         "(*.json) in --records; the rest of README is left as it is.")
    rep.add_argument("--readme", default="README.md")
    rep.add_argument("--records", default="saved_models", help="folder of run records (default: saved_models)")
    rep.add_argument("--figures", default="docs/figures", help="where the PNG figures go (default: docs/figures)")
    rep.add_argument("--no-figures", action="store_true", help="only the table (no data set or model needed)")
    rep.add_argument("--model", default="cnn", help="run whose model gets the test-set analysis (default: cnn)")
    add_data_dir(rep)
    return parser


def command_line(argv):
    return "python -m cifar_keras " + shlex.join(argv)


def run_fit(args, argv):
    from cifar_keras import train

    options = {k: getattr(args, k) for k in ("epochs", "batch_size", "learning_rate", "weight_decay",
                                             "label_smoothing", "warmup_epochs", "crop_pad", "cutout_size", "flip", "tta",
                                             "seed", "train_size", "val_size", "patience", "precision", "distribute",
                                             "test_set")}
    hparams_file = args.hparams
    if hparams_file is None and Path(f"tuning/{args.model}/best_hparams.json").is_file():
        hparams_file = f"tuning/{args.model}/best_hparams.json"
    if hparams_file == "none":
        hparams_file = None
    hparams = train.read_hparams(hparams_file, args.model) if hparams_file else None
    config = train.make_config(args.model, hparams=hparams, **options)
    config["hparams_file"] = hparams_file
    record = train.fit(config, data_dir=args.data_dir, output_dir=args.output_dir, name=args.name,
                       command=command_line(argv))
    test, val = record["test"], record["val"]
    scores = (f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  superclass {test['superclass']:.2f}%"
              if test else f"val top-1 {val['top1']:.2f}% (test set not used)")
    print(f"{record['name']}: {scores}  ({record['train_wall_time_s']:.0f} s training) -> {record['files']['model']}")


def run_evaluate(args, argv):
    from cifar_keras import data, models, records
    from cifar_keras.evaluate import evaluate_model

    model = models.load_keras_model(args.model_path)
    dataset = data.load(args.data_dir)
    split = dataset.test
    if args.split == "val":
        split = data.train_val_split(dataset.train, args.val_size, seed=args.seed)[1]
    result = evaluate_model(model, split, dataset.fine_to_coarse())
    record = {"kind": "evaluate", "model_path": str(args.model_path), "split": args.split,
              "command": command_line(argv), args.split: result, **records.environment()}
    if args.output:
        records.write(args.output, record)
    if args.report_dir:
        from cifar_keras.report import model_figures

        facts = model_figures(model, dataset, args.report_dir, split)
        print(f"figures: {', '.join(str(p) for p in facts['figures'].values())}", file=sys.stderr)
    print(json.dumps({args.split: result}, indent=2))


def run_tune(args, argv):
    from cifar_keras.tune import tune

    best, trials = tune(args.model, args.tuner, args.max_trials, args.epochs, args.max_epochs, args.train_size,
                        args.val_size, args.seed, args.precision, args.data_dir, args.tuning_dir, command_line(argv),
                             args.budget)
    print(f"{len(trials)} trials; best validation accuracy {100 * best['val_accuracy']:.2f}% -> "
          f"{Path(args.tuning_dir) / args.model / 'best_hparams.json'}")


def run_bench(args, argv):
    from cifar_keras import bench, records

    backends = [b for b in args.backends.split(",") if b]
    precisions = [p for p in args.precisions.split(",") if p]
    for name, values, allowed in (("--backends", backends, bench.BACKENDS), ("--precisions", precisions, bench.PRECISIONS)):
        wrong = sorted(set(values) - set(allowed))
        if wrong or not values:
            raise UserError(f"{name}: unknown {', '.join(wrong) or 'empty list'}; choose from {', '.join(allowed)}")
    results = bench.run(args.model, backends, precisions, args.batch_size, args.steps, args.warmup)
    records.write(args.output, {"kind": "bench", "model": args.model, "command": command_line(argv),
                                "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                                "results": results, **records.environment()})
    for r in results:
        speed = f"{r['train_images_per_s']:8.1f} img/s" if "error" not in r else f"failed: {r['error']}"
        print(f"{r['backend']:<11} {r['precision']:<15} {speed}")
    return 1 if any("error" in r for r in results) else 0


def run_export(args, argv):
    from cifar_keras import models
    from cifar_keras.export import export_model

    model = models.load_keras_model(args.model_path)
    target = export_model(model, args.root, args.name or Path(args.model_path).stem, args.version)
    print(f"exported {args.model_path} -> {target}")


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


def run_report(args, argv):
    from cifar_keras import report

    analysis = None
    if not args.no_figures:
        analysis = report.write_analysis(args.records, args.figures, Path(args.readme).parent, args.data_dir, args.model)
    changed = report.update_readme(args.readme, args.records, analysis)
    print(f"{args.readme}: results table {'updated' if changed else 'already up to date'}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        handler = {"fit": run_fit, "evaluate": run_evaluate, "export": run_export, "predict": run_predict,
                   "tune": run_tune, "bench": run_bench, "report": run_report}[args.command]
        return handler(args, argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
