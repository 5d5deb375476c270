"""`evaluate`: test-set (or validation) metrics of a .keras model or an export; --corruptions: the
corruption benchmark."""

import json
import sys

from cifar_keras.cli.common import (add_data_dir, add_validation_split, comma_list, positive_int, record_beside,
                                   reject_without, run_record, validation_split)
from cifar_keras.errors import UserError


def add_parser(sub):
    parser = sub.add_parser("evaluate", help="test-set metrics of a saved .keras model or of an export",
                            description="Top-1, top-5 and superclass accuracy of a saved model, and how well its "
                            "probabilities are calibrated (ECE over 15 confidence bins, NLL, Brier score), on the "
                            "test set (default) or on the validation split that fit carves from the training set.")
    parser.add_argument("model_path", help="a .keras file, or an export folder or file (SavedModel, model.onnx, "
                        "model.tflite, model_int8.tflite, model.xml, model_int8.xml), run in its own runtime")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    add_validation_split(parser)
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
        "severities 1-5 (see cifar_keras/evaluation/corruptions.py; frost uses synthetic frost textures); prints top-1 per "
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
    parser.set_defaults(handler=run)


def corruption_selection(args):
    """(corruption names, severities) that evaluate --corruptions runs; one-line errors for bad values, and for
    benchmark options without --corruptions."""
    from cifar_keras.evaluation.corruptions import CORRUPTIONS, SEVERITIES

    if not args.corruptions:
        reject_without("--corruptions", (("--corruption-images", args.corruption_images),
                                         ("--corruption-types", args.corruption_types),
                                         ("--severities", args.severities)))
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
    from cifar_keras.evaluation import corruption_benchmark
    from cifar_keras import data

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
    result = corruption_benchmark.benchmark(lambda s: score(model, s), split, names, severities, args.corruption_seed)
    record = run_record("corruptions", argv, model_path=str(args.model_path), **deployed, split=args.split,
                        images=len(split), image_selection=selected, corruption_seed=args.corruption_seed,
                        corruption_types=names, severities=severities,
                        corruption_method="Hendrycks & Dietterich (ICLR 2019) CIFAR-10-C/100-C parameters, "
                        "cifar_keras/evaluation/corruptions.py (frost: synthetic frost textures)", **result)
    records.write(record_path, record)
    print(corruption_benchmark.table(record))
    print(f"record: {record_path}")


def run(args, argv):
    from cifar_keras import records
    from cifar_keras import data
    from cifar_keras import models
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
        split = validation_split(dataset, args)[0]
    deployed = ({"tta": args.tta or models.tta_kind(model) or "none"} if fmt == "keras"
                else {"format": fmt, "precision": model.precision, "runtime": model.runtime})
    score = evaluate_model if fmt == "keras" else evaluate_predictor
    if selection:
        record_path = args.output or record_beside(args.model_path, "corruptions")
        return run_corruption_benchmark(args, argv, selection, model, split,
                                        lambda m, s: score(m, s, dataset.fine_to_coarse()), deployed, record_path)
    result = score(model, split, dataset.fine_to_coarse())
    if args.output:
        records.write(args.output, run_record("evaluate", argv, model_path=str(args.model_path), **deployed,
                                              split=args.split, **{args.split: result}))
    if args.report_dir:
        from cifar_keras.reporting.figures import model_figures

        facts = model_figures(model, dataset, args.report_dir, split)
        print(f"figures: {', '.join(str(p) for p in facts['figures'].values())}", file=sys.stderr)
    print(json.dumps({args.split: result}, indent=2))
