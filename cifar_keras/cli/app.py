"""Command line: python -m cifar_keras {fit,launch,evaluate,calibrate,tune,export,predict,bench,report} ...
(see --help of each).

Each command has a small `add_<command>_parser` next to its `run_<command>` handler.
Training options come from the one run schema (config.RunConfig); Keras is imported
only by the handlers, so --help stays fast.
"""

import argparse
import json
import shlex
import sys
import traceback
from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras.distributed import multiworker
from cifar_keras.search import parallel
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


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


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
    cluster = parser.add_argument_group(
        "cluster (--distribute multiworker)",
        "Run the same fit command on every machine (KERAS_BACKEND=jax), each as one process of the cluster; process "
        "0 writes the outputs. Unset flags come from KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID, else from a Slurm job step. On one "
        "machine, `launch` starts them all.")
    cluster.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address and a free port on it")
    cluster.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the cluster")
    cluster.add_argument("--process-id", type=non_negative_int, metavar="I", help="this process's id, 0..N-1")
    cluster.add_argument("--cluster-timeout", type=positive(float, "must be a positive number of seconds"),
                         default=multiworker.DEFAULT_TIMEOUT, metavar="SECONDS",
                         help="how long the processes wait for each other to join, and after which a silent process "
                         f"counts as dead (default {multiworker.DEFAULT_TIMEOUT})")
    parser.set_defaults(handler=run_fit)


def cluster_of(args):
    """This process's multiworker.Cluster (from the cluster flags, else Keras' or Slurm's variables), or None
    without --distribute multiworker."""
    given = [flag for flag, value in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                                      ("--process-id", args.process_id)) if value is not None]
    if args.distribute != "multiworker":
        if given:
            raise UserError(f"{given[0]} needs --distribute multiworker")
        return None
    multiworker.check_backend()
    return multiworker.resolve_cluster(args.coordinator, args.num_processes, args.process_id, args.cluster_timeout)


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

    from cifar_keras import models
    from cifar_keras.training import fit

    cluster = cluster_of(args)
    if cluster:  # joined before anything runs on JAX (checking --model-args builds a model)
        multiworker.join_cluster(cluster)
    hparams, provenance = resolve_hparams(args.hparams, args.model)
    model_args = args.model_args and models.check_model_args(args.model_args, args.model, "--model-args")
    config = run_config.make_config(args.model, hparams=hparams, model_args=model_args,
                                    **run_config.overrides(args, FIT_OPTIONS))
    callbacks = [keras.callbacks.TensorBoard(args.tensorboard)] if args.tensorboard else []
    record = fit.fit(config, data_dir=args.data_dir, output_dir=args.output_dir, name=args.name,
                       command=command_line(argv), hparams=provenance, extra_callbacks=callbacks, cluster=cluster)
    if record is None:  # a process other than 0 of a cluster
        print(f"process {cluster.process_id} of {cluster.num_processes}: training done; process 0 writes the model "
              "and the run record")
        return
    test, val = record["test"], record["val"]
    scores = (f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  superclass {test['superclass']:.2f}%"
              if test else f"val top-1 {val['top1']:.2f}% (test set not used)")
    print(f"{record['name']}: {scores}  ({record['train_wall_time_s']:.0f} s training) -> {record['files']['model']}")


def add_launch_parser(sub):
    parser = sub.add_parser(
        "launch", help="run a fit as N processes of one cluster on this machine (--distribute multiworker), or a "
        "tune as a chief and N workers",
        description="Start N processes of `python -m cifar_keras fit ...` (with --distribute multiworker) on this "
        "machine, joined as one cluster on a free loopback port: KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID are set for each, and KERAS_BACKEND=jax "
        "unless it is set. Shows process 0's output (the others' last lines if they fail). When a process fails, "
        "the others are stopped and launch exits with its exit code. Rerun the same command to resume. With a tune "
        "command: a distributed search, the chief (process 0, --tuner-id chief) and N workers (processes 1..N, "
        "--tuner-id tuner0, tuner1, ...) on a free loopback port, sharing the tuning folder; N trials run at once.")
    parser.add_argument("--processes", "--workers", type=positive_int, required=True, metavar="N",
                        help="fit: processes of the cluster; tune: workers, besides the chief")
    parser.add_argument("--cores-per-process", type=positive_int, metavar="C",
                        help="fit: pin each process to its own C cores of this machine (Linux), so that the processes "
                        "do not compete for cores (default: every process may use every core)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- fit|tune MODEL ...",
                        help="the fit or tune command, after --")
    parser.set_defaults(handler=run_launch)


def run_launch(args, argv):
    if args.command[args.command[:1] == ["--"]:][:1] == ["tune"]:  # the chief, then the workers
        if args.cores_per_process:
            raise UserError("--cores-per-process is for fit (a tune's workers share the machine's cores)")
        return multiworker.supervise(parallel.launch_commands(args.command, args.processes))
    return multiworker.run_processes(multiworker.launch_command(args.command), args.processes,
                                     cores_per_process=args.cores_per_process)


# --- evaluate ----------------------------------------------------------------------------------

def add_evaluate_parser(sub):
    parser = sub.add_parser("evaluate", help="test-set metrics of a saved .keras model or of an export",
                            description="Top-1, top-5 and superclass accuracy of a saved model, and how well its "
                            "probabilities are calibrated (ECE over 15 confidence bins, NLL, Brier score), on the "
                            "test set (default) or on the validation split that fit carves from the training set.")
    parser.add_argument("model_path", help="a .keras file, or an export folder or file (SavedModel, model.onnx, "
                        "model.tflite, model_int8.tflite, model.xml, model_int8.xml), run in its own runtime")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    groups = {"data": parser}
    run_config.add_run_options(parser, groups, ["val_size", "seed"])
    parser.set_defaults(val_size=DEFAULTS.val_size, seed=DEFAULTS.seed)
    parser.add_argument("--output", help="also write the result as a JSON run record here")
    parser.add_argument("--report-dir", help="also write superclass-confusion, per-class-accuracy and example "
                        "figures here")
    parser.add_argument("--tta", choices=("none", "flip", "flip_translate"),
                        help=".keras models: score with this test-time augmentation instead of the model's own "
                        "(a TTA model's inner model is re-wrapped; none: the inner model alone)")
    add_data_dir(parser)
    robustness = parser.add_argument_group(
        "corruption benchmark (--corruptions)",
        "CIFAR-100-C-style: the split's images under the 15 corruptions of Hendrycks & Dietterich (ICLR 2019) at "
        "severities 1-5 (see cifar_keras/corruptions.py; frost uses synthetic frost textures); prints top-1 per "
        "corruption and severity and the mean corruption top-1 (mean over every corruption x severity), and writes "
        "a run record to --output (default for a .keras model: corruptions/NAME.json beside it)")
    robustness.add_argument("--corruptions", action="store_true",
                            help="score the model on the clean images and on every corruption x severity")
    robustness.add_argument("--corruption-images", type=positive_int, metavar="N",
                            help="a stratified subset of N images (a multiple of the 100 classes), for speed "
                            "(default: all of the split)")
    robustness.add_argument("--corruption-types", metavar="A,B", help="comma-separated subset of the corruptions "
                            "(default: all 15)")
    robustness.add_argument("--severities", metavar="1,3", help="comma-separated subset of 1-5 (default: all)")
    robustness.add_argument("--corruption-seed", type=int, default=0,
                            help="seed of the corruptions' random draws and of the --corruption-images subset "
                            "(default 0)")
    parser.set_defaults(handler=run_evaluate)


def comma_list(flag, text, allowed):
    """The values of a comma-separated option, each one of `allowed`; a one-line error otherwise."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    wrong = sorted(set(values) - set(allowed))
    if wrong or not values:
        raise UserError(f"{flag}: unknown {', '.join(wrong) or 'empty list'}; choose from {', '.join(allowed)}")
    return values


def corruption_selection(args):
    """(corruption names, severities) that evaluate --corruptions runs; one-line errors for bad values, and for
    benchmark options without --corruptions."""
    from cifar_keras.evaluation.corruptions import CORRUPTIONS, SEVERITIES

    given = [flag for flag, value in (("--corruption-images", args.corruption_images),
                                      ("--corruption-types", args.corruption_types),
                                      ("--severities", args.severities)) if value is not None]
    if not args.corruptions:
        if given:
            raise UserError(f"{given[0]} needs --corruptions")
        return None
    if args.report_dir:
        raise UserError("--report-dir does not go with --corruptions")
    if args.corruption_seed < 0:
        raise UserError(f"--corruption-seed must be >= 0, got {args.corruption_seed}")
    selected = []
    for flag, text, allowed in (("--corruption-types", args.corruption_types, CORRUPTIONS),
                                ("--severities", args.severities, tuple(str(s) for s in SEVERITIES))):
        values = allowed if text is None else comma_list(flag, text, allowed)
        selected.append([v for v in allowed if v in values])  # in the benchmark's order, once each
    names, severities = selected
    return names, [int(s) for s in severities]


def run_corruption_benchmark(args, argv, selection, model, split, score, deployed, record_path):
    """evaluate --corruptions: `score` (Split -> metrics) on the clean images and under every selected corruption
    x severity; writes the run record to `record_path` and prints the table."""
    from cifar_keras import records
    from cifar_keras.evaluation import corruptions
    from cifar_keras import data
    from cifar_keras import hardware

    selected = "all"
    if args.corruption_images is not None and args.corruption_images < len(split):
        classes = len(set(split.fine.tolist()))
        if args.corruption_images % classes:
            raise UserError(f"--corruption-images {args.corruption_images} must be a multiple of the {classes} "
                            f"classes (a stratified subset), or at least {len(split)} for all images")
        per_class = args.corruption_images // classes
        keep = data.stratified_split(split.fine, per_class, args.corruption_seed, "--corruption-images")[1]
        split = split.take(keep)
        selected = f"stratified, {per_class} per class (seed {args.corruption_seed})"
    names, severities = selection
    print(f"corruption benchmark of {args.model_path}: {len(split)} {args.split} images, {len(names)} corruptions "
          f"x {len(severities)} severities", file=sys.stderr)
    result = corruptions.benchmark(lambda s: score(model, s), split, names, severities, args.corruption_seed)
    record = {"kind": "corruptions", "model_path": str(args.model_path), **deployed, "split": args.split,
              "command": command_line(argv), "images": len(split), "image_selection": selected,
              "corruption_seed": args.corruption_seed, "corruption_types": names, "severities": severities,
              "corruption_method": "Hendrycks & Dietterich (ICLR 2019) CIFAR-10-C/100-C parameters, cifar_keras/"
              "corruptions.py (frost: synthetic frost textures)",
              **result, "code": records.code_version(), **hardware.environment()}
    records.write(record_path, record)
    print(corruptions.table(record))
    print(f"record: {record_path}")


def run_evaluate(args, argv):
    from cifar_keras import records
    from cifar_keras import data
    from cifar_keras import models
    from cifar_keras import hardware
    from cifar_keras.deploy import runtimes
    from cifar_keras.evaluation.metrics import evaluate_model, evaluate_predictor

    fmt = runtimes.detect(args.model_path)[0]  # .keras, or any export, in its own runtime
    if fmt != "keras" and args.report_dir:
        raise UserError("--report-dir needs the .keras model")
    selection = corruption_selection(args)  # None without --corruptions
    if selection and not args.output and fmt != "keras":
        raise UserError("--corruptions on an export needs --output (the record's default, corruptions/NAME.json "
                        "beside the model, is for .keras files)")
    if fmt != "keras" and args.tta:
        raise UserError("--tta needs the .keras model")
    model = models.load_keras_model(args.model_path) if fmt == "keras" else runtimes.load(args.model_path)
    if args.tta:
        model = models.with_tta_kind(model, args.tta)
    dataset = data.load(args.data_dir)
    split = dataset.test
    if args.split == "val":
        split = data.train_val_split(dataset.train, args.val_size, seed=args.seed)[1]
    deployed = ({"tta": args.tta or models.tta_kind(model) or "none"} if fmt == "keras"
                else {"format": fmt, "precision": model.precision, "runtime": model.runtime})
    score = evaluate_model if fmt == "keras" else evaluate_predictor
    if selection:
        source = Path(args.model_path)
        record_path = args.output or source.parent / "corruptions" / f"{source.stem}.json"
        return run_corruption_benchmark(args, argv, selection, model, split,
                                        lambda m, s: score(m, s, dataset.fine_to_coarse()), deployed, record_path)
    result = score(model, split, dataset.fine_to_coarse())
    record = {"kind": "evaluate", "model_path": str(args.model_path), **deployed, "split": args.split,
              "command": command_line(argv), args.split: result, **hardware.environment()}
    if args.output:
        records.write(args.output, record)
    if args.report_dir:
        from cifar_keras.reporting.report import model_figures

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
    from cifar_keras import records
    from cifar_keras.evaluation import calibration
    from cifar_keras import data
    from cifar_keras import models
    from cifar_keras import hardware

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
    calibrated, result, test_logits = calibration.calibrate(model, val, dataset.test)
    temperature = result["temperature"]
    if not calibration.TEMPERATURE_RANGE[0] * 1.001 < temperature < calibration.TEMPERATURE_RANGE[1] / 1.001:
        print(f"calibrate: warning: T = {temperature:.4g} is at the end of the searched range "
              f"{calibration.TEMPERATURE_RANGE}", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    calibrated.save(output)
    previous = calibration.temperature_of(model)
    record = {"kind": "calibrate", "model_path": str(source), "output": str(output), "command": command_line(argv),
              "temperature": result["temperature"], "temperature_before": previous, "bins": result["bins"],
              "val_size": args.val_size, "seed": args.seed, "val_images": len(val), "test_images": len(dataset.test),
              "val": result["val"], "test": result["test"], "code": records.code_version(), **hardware.environment()}
    record = calibration.rounded(record)
    if args.figure:
        from cifar_keras.reporting.plots import reliability_diagram

        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        reliability_diagram({"before": calibration.probabilities(test_logits),
                             f"after (T = {temperature:.2f})": calibration.probabilities(test_logits, temperature)},
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
    distributed = parser.add_argument_group(
        "distributed search (KerasTuner's chief and workers)",
        "Run the same tune command on every machine, adding its part: one chief (--tuner-id chief), which holds "
        "the search, trains nothing and writes the summaries once the search is over, and workers (--tuner-id "
        "tuner0, tuner1, ...), each training one trial at a time; N workers run N trials at once. Unset flags come "
        "from KerasTuner's KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT. On one machine, "
        "`launch --workers N -- tune ...` starts the chief and N workers.")
    distributed.add_argument("--tuner-id", metavar="chief|tunerN",
                             help="this process's part: chief, or a worker's own id tuner0, tuner1, ...")
    distributed.add_argument("--oracle", metavar="HOST:PORT",
                             help="the chief's address, as the workers reach it, and a free port there")
    distributed.add_argument("--workers", type=positive_int, metavar="N",
                             help="the chief's (workers ignore it): the number of workers; it finishes once each was "
                             "told the search is over (default: once every worker it heard from was, so a worker "
                             "starting later waits in vain)")
    distributed.add_argument("--oracle-timeout", type=positive(float, "must be a positive number of seconds"),
                             default=parallel.DEFAULT_TIMEOUT, metavar="SECONDS",
                             help="how long a worker waits for the chief's answer, and the chief (with --workers), "
                             "after the last trial, for workers that never asked "
                             f"(default {parallel.DEFAULT_TIMEOUT})")
    parser.set_defaults(handler=run_tune)


def run_tune(args, argv):
    from cifar_keras.search.tune import tune

    options = {k: v for k, v in run_config.overrides(args, TUNE_OPTIONS).items() if v is not None}
    role = parallel.resolve_role(args.tuner_id, args.oracle, args.workers, args.oracle_timeout)
    best, trials = tune(args.model, kind=args.tuner, max_trials=args.max_trials, epochs=args.epochs,
                        max_epochs=args.max_epochs, budget=args.budget, data_dir=args.data_dir,
                        tuning_dir=args.tuning_dir, command=command_line(argv), role=role, **options)
    if best is None:  # a worker of a distributed search
        print(f"{role.tuner_id}: ran trial(s) {', '.join(trials) or 'none'}; the search is over, and the chief writes "
              "its summaries")
        return
    print(f"{len(trials)} trials; best validation accuracy {100 * best['val_accuracy']:.2f}% -> "
          f"{Path(args.tuning_dir) / args.model / 'best_hparams.json'}")


# --- export and predict ------------------------------------------------------------------------

def add_export_parser(sub):
    parser = sub.add_parser(
        "export", help="write a .keras model for TF Serving, onnxruntime, LiteRT or OpenVINO",
        description="Write MODEL_PATH in FORMAT's layout ROOT/NAME/VERSION/, then run it in its own runtime in a "
        "fresh process and compare with the .keras model. Every format takes 'pixels' float32 (None, 32, 32, 3) raw "
        "RGB 0-255 and returns 'probabilities' (None, 100); class names go to labels.txt. saved_model (TF Serving): "
        "saved_model.pb + variables/, labels in assets.extra/, signature serving_default also returning "
        "'top5_classes' and 'top5_probabilities'; onnx: model.onnx; litert: model.tflite (+ model_int8.tflite); "
        "openvino: model.xml + model.bin (+ model_int8.xml/.bin). onnx, litert and openvino need "
        "pip install -e '.[deploy]'.")
    parser.add_argument("model_path")
    parser.add_argument("--format", choices=("saved_model", "onnx", "litert", "openvino"), default="saved_model",
                        help="default: saved_model")
    parser.add_argument("--name", help="model name in the server (default: the file's stem, e.g. cnn)")
    parser.add_argument("--version", type=positive_int,
                        help="version number (default: one more than the highest present)")
    parser.add_argument("--root", help="folder holding NAME/VERSION/ (default: saved_models for saved_model, "
                        "saved_models/FORMAT otherwise, so TF Serving's model folder holds SavedModels only)")
    parser.add_argument("--int8", action="store_true",
                        help="litert and openvino: also write an int8 model (post-training quantisation calibrated on "
                        "training images; OpenVINO's with nncf)")
    parser.add_argument("--calibration-images", type=positive_int, default=500,
                        help="training images for --int8 calibration, stratified over the classes (default 500)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip running the export in its own runtime (fresh process) against the .keras model")
    parser.add_argument("--verify-images", type=positive_int, default=1000,
                        help="with --data-dir: verify on the first N test images (default 1000; without --data-dir, "
                        "100 random-pixel images)")
    parser.add_argument("--record", help="also write the verification (per file: runtime, images, top-1 agreement, "
                        "largest probability difference) as a JSON run record here")
    add_data_dir(parser)
    parser.set_defaults(handler=run_export)


def run_export(args, argv):
    import numpy as np

    from cifar_keras import models
    from cifar_keras.deploy.export import artifacts, calibration_images, check_format, export_model, verify

    check_format(args.format, args.int8)
    if not args.no_verify:  # before writing anything
        from cifar_keras.deploy.runtimes import RUNTIMES, require

        require(*RUNTIMES[args.format], f"verifying the {args.format} export")
    model = models.load_keras_model(args.model_path)
    images = None
    if args.int8:
        images = calibration_images(args.data_dir, args.calibration_images)
    root = args.root or ("saved_models" if args.format == "saved_model" else f"saved_models/{args.format}")
    target = export_model(model, root, args.name or Path(args.model_path).stem, args.version, args.format,
                          images if args.int8 else None)
    print(f"exported {args.model_path} -> {target}")
    if args.no_verify:
        return
    if args.data_dir:  # real images the int8 calibration never saw
        from cifar_keras import data

        images = data.load(args.data_dir).test.images[:args.verify_images]
        what = f"the first {len(images)} test images"
    else:
        images = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3))
        what = "100 random-pixel images (--data-dir: test images)"
    pixels = images.astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    checks = []
    for path, precision in artifacts(target, args.format):
        checks.append(verify(path, args.format, precision, pixels, expected))
        print(f"verified {path} ({precision}) in {checks[-1]['runtime']}, fresh process: top-1 agrees with the .keras "
              f"model on {100 * checks[-1]['top1_agreement']:.1f} % of {what}, max |probability difference| "
              f"{checks[-1]['max_abs_diff']:.1e}")
    if args.record:
        from cifar_keras import records
        from cifar_keras import hardware

        records.write(args.record, {"kind": "export", "model_path": str(args.model_path), "format": args.format,
                                    "export": str(target), "verified_on": what, "verification": checks,
                                    "command": command_line(argv), "code": records.code_version(),
                                    **hardware.environment()})


def add_predict_parser(sub):
    parser = sub.add_parser(
        "predict", help="top-5 classes of image files",
        description="Print the top-5 CIFAR-100 classes of each image (PNG, JPEG, BMP, ... any size, converted to "
        "RGB; the largest centred square is cut out and resized to 32x32 with antialiasing, as CIFAR images are "
        "object-centred squares). MODEL is a .keras file or an export (folder or file, any format). Unreadable "
        "images are reported one line each; the others are still predicted.")
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run_predict)


def run_predict(args, argv):
    from cifar_keras.deploy.predict import predict_files

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
    parser = sub.add_parser("bench", help="CNN training throughput per Keras backend and precision (--inference: "
                            "inference per deployment format and precision; --layouts: one process or several)",
                            description="Time fit() steps of MODEL on each Keras backend with and without mixed "
                            "precision, one subprocess each, side by side; write the run record OUTPUT. With "
                            "--inference: export the trained MODEL (saved_models/MODEL.keras) to every format, then "
                            "time batch-1 latency (median, p99) and batch-BATCH_SIZE throughput of each format and "
                            "precision, one subprocess each (needs pip install -e '.[deploy]').")
    parser.add_argument("model", nargs="?", default="cnn", choices=MODEL_NAMES)
    parser.add_argument("--backends", default="tensorflow,jax,torch", help="comma-separated (default: all three)")
    parser.add_argument("--precisions",
                        help="comma-separated (default: float32,bfloat16; with --inference float32,int8,bfloat16: "
                        "int8 for litert and openvino, bfloat16 for openvino on CPUs that have it)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    parser.add_argument("--steps", type=positive_int, default=20,
                        help="timed training steps, or with --inference timed batch-BATCH_SIZE calls (default 20)")
    parser.add_argument("--warmup", type=positive_int, default=3,
                        help="untimed steps (calls of each batch size) first, for compilation (default 3)")
    parser.add_argument("--output", help="run record (default: saved_models/bench.json, with --inference "
                        "saved_models/inference.json, with --layouts saved_models/processes.json)")
    cluster = parser.add_argument_group("one machine's cores in one process or several (--layouts)")
    cluster.add_argument("--layouts", metavar="PxC,PxC",
                         help="instead of the backends and precisions: for each layout, P processes of one JAX "
                         "cluster (as `launch --processes P --cores-per-process C -- fit MODEL`), each pinned to its "
                         "own C cores, BATCH_SIZE images per process, float32; time fit() steps and count the network "
                         "bytes this machine sends per step (e.g. 1x2,2x1: both cores in one process, or one core "
                         "in each of two)")
    inference = parser.add_argument_group("inference (--inference)")
    inference.add_argument("--inference", action="store_true",
                           help="time inference of the trained model per format and precision instead of training")
    inference.add_argument("--model-file", help="the .keras model (default: saved_models/MODEL.keras)")
    inference.add_argument("--formats", default="keras,saved_model,onnx,litert,openvino",
                           help="comma-separated (default: keras,saved_model,onnx,litert,openvino)")
    inference.add_argument("--latency-runs", type=positive_int, default=200,
                           help="timed batch-1 calls (default 200)")
    inference.add_argument("--calibration-images", type=positive_int, default=500,
                           help="training images calibrating the int8 models (default 500)")
    inference.add_argument("--threads", type=positive_int,
                           help="threads per runtime (default: each runtime's own, all cores; LiteRT: all cores)")
    add_data_dir(inference)
    parser.set_defaults(handler=run_bench)


def run_bench_inference(args, argv):
    from cifar_keras import records
    from cifar_keras.reporting import bench
    from cifar_keras import hardware
    from cifar_keras.deploy.export import calibration_images

    formats = comma_list("--formats", args.formats, bench.INFERENCE_FORMATS)
    precisions = comma_list("--precisions", args.precisions or "float32,int8,bfloat16", bench.INFERENCE_PRECISIONS)
    model_file = args.model_file or f"saved_models/{args.model}.keras"
    bench.check_inference_runtimes(formats, "int8" in precisions)
    calibration = None
    if "int8" in precisions and {"litert", "openvino"} & set(formats):
        calibration = calibration_images(args.data_dir, args.calibration_images)
    results = bench.run_inference(model_file, formats, precisions, args.batch_size, args.steps, args.warmup,
                                  args.latency_runs, calibration, args.threads)
    environment = hardware.environment()
    environment["hardware"]["cpu_features"] = sorted(
        hardware.cpu_flags() & (hardware.REPORTED_CPU_FEATURES | bench.INT8_CPU_FEATURES))
    record = {"kind": "bench_inference", "model_file": model_file, "command": command_line(argv),
              "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
              "latency_runs": args.latency_runs, "calibration_images": args.calibration_images,
              "results": results, **environment, "code": records.code_version()}
    # Not bench*.json: report reads those as training benches.
    records.write(args.output or "saved_models/inference.json", record)
    print(bench.inference_table(record), end="")
    return 1 if any("error" in r for r in results) else 0


def run_bench_processes(args, argv):
    from cifar_keras import records
    from cifar_keras.reporting import bench
    from cifar_keras import hardware

    layouts = bench.parse_layouts(args.layouts)
    results = bench.run_processes_bench(args.model, layouts, args.batch_size, args.steps, args.warmup)
    record = {"kind": "bench_processes", "model": args.model, "command": command_line(argv),
              "batch_size_per_process": args.batch_size, "steps": args.steps, "warmup": args.warmup,
              "network_bytes": "bytes this machine sent over all interfaces (loopback included) during the timed "
                               "steps, per step (/proc/net/dev)",
              "results": results, **hardware.environment(), "backend": "jax", "code": records.code_version()}
    records.write(args.output or "saved_models/processes.json", record)  # not bench*.json (training benches)
    print(bench.processes_table(record), end="")
    return 1 if any("error" in r for r in results) else 0


def run_bench(args, argv):
    from cifar_keras import records
    from cifar_keras.reporting import bench
    from cifar_keras import hardware

    if args.inference:
        return run_bench_inference(args, argv)
    if args.layouts:
        return run_bench_processes(args, argv)
    backends = comma_list("--backends", args.backends, bench.BACKENDS)
    precisions = comma_list("--precisions", args.precisions or "float32,bfloat16", bench.PRECISIONS)
    results = bench.run(args.model, backends, precisions, args.batch_size, args.steps, args.warmup)
    args.output = args.output or "saved_models/bench.json"
    records.write(args.output, {"kind": "bench", "model": args.model, "command": command_line(argv),
                                "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                                "results": results, **hardware.environment(), "code": records.code_version()})
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
    parser.add_argument("--no-figures", action="store_true", help="only the tables: README's figures and "
                        "test-set analysis stay as they are (no data set or model needed)")
    parser.add_argument("--model", default="cnn", help="run whose model gets the test-set analysis (default: cnn)")
    add_data_dir(parser)
    parser.set_defaults(handler=run_report)


def run_report(args, argv):
    from cifar_keras.reporting import report

    analysis = None
    if not args.no_figures:
        analysis = report.write_analysis(args.records, args.figures, Path(args.readme).parent, args.data_dir,
                                         args.model)
    changed = report.update_readme(args.readme, args.records, analysis)
    print(f"{args.readme}: results table {'updated' if changed else 'already up to date'}")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cifar_keras", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_fit_parser, add_launch_parser, add_evaluate_parser, add_calibrate_parser, add_tune_parser,
                add_export_parser, add_predict_parser, add_bench_parser, add_report_parser):
        add(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        from cifar_keras import hardware

        if args.command != "launch":  # the launched processes import it
            hardware.import_tensorflow_quietly()
        return args.handler(args, argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return multiworker.abandon(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return multiworker.abandon(130)
    except Exception as e:
        # A process of a cluster exits at once: JAX's shutdown would wait for the others.
        message = multiworker.explain(e)
        if message is None and not multiworker.in_cluster():
            raise
        if message is None:
            traceback.print_exc()
        else:
            print(f"error: {message}", file=sys.stderr)
        return multiworker.abandon(1)
