"""`bench`: training throughput per backend and precision; --inference: per deployment format; --layouts: one
process or several."""

import argparse

from cifar_keras.cli.common import add_data_dir, comma_list, json_object, positive_int, run_record
from cifar_keras.errors import UserError
from cifar_keras.config import DEFAULTS, MODEL_NAMES


def add_parser(sub):
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
    parser.add_argument("--variant", action="append", type=variant, metavar="NAME=JSON",
                        help="also time the recipe with these options changed (RunConfig fields, as fit's flags set "
                        "them), side by side with the others, e.g. --variant 'sgd={\"optimizer\": \"sgd\", "
                        "\"learning_rate\": 0.2}' --variant 'no_ema={\"ema\": 0.0}'; repeatable (default: the "
                        "recipe alone; with a variant, the recipe is timed first as 'recipe')")
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
    inference.add_argument("--views", help="comma-separated view counts to time the model with (1: its single-view "
                           "net, 2: flip, 6: flip + translate), each exported as `export --views` ships it "
                           "(default: the model as saved)")
    inference.add_argument("--latency-runs", type=positive_int, default=200,
                           help="timed batch-1 calls (default 200)")
    inference.add_argument("--calibration-images", type=positive_int, default=500,
                           help="training images calibrating the int8 models (default 500)")
    inference.add_argument("--threads", type=positive_int,
                           help="threads per runtime (default: each runtime's own, all cores; LiteRT: all cores)")
    add_data_dir(inference)
    parser.set_defaults(handler=run)


def variant(text):
    """NAME=JSON (a name, and a JSON object of recipe options) -> (name, options), for --variant."""
    name, _, options = text.partition("=")
    if not name.strip() or not options:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    return name.strip(), json_object(options)


def exit_status(results):
    """1 if a run of the bench failed (its result holds the error), else 0."""
    return 1 if any("error" in r for r in results) else 0


def run_inference(args, argv):
    from cifar_keras import records
    from cifar_keras.reporting import bench
    from cifar_keras import hardware
    from cifar_keras.deploy.export import INT8_FORMATS, calibration_images

    formats = comma_list("--formats", args.formats, bench.INFERENCE_FORMATS)
    precisions = comma_list("--precisions", args.precisions or "float32,int8,bfloat16", bench.INFERENCE_PRECISIONS)
    model_file = args.model_file or f"saved_models/{args.model}.keras"
    views = None if args.views is None else [int(v) for v in comma_list("--views", args.views, ("1", "2", "6"))]
    bench.check_inference_runtimes(formats, "int8" in precisions)  # before loading any data: fail fast
    calibration = None
    if "int8" in precisions and set(INT8_FORMATS) & set(formats):
        calibration = calibration_images(args.data_dir, args.calibration_images)
    results = bench.run_inference(model_file, formats, precisions, args.batch_size, args.steps, args.warmup,
                                  args.latency_runs, calibration, args.threads, views=views)
    record = run_record("bench_inference", argv, model_file=model_file, batch_size=args.batch_size, steps=args.steps,
                        warmup=args.warmup, latency_runs=args.latency_runs,
                        calibration_images=args.calibration_images, results=results)
    record["hardware"]["cpu_features"] = sorted(  # with the features int8 inference uses
        hardware.cpu_flags() & (hardware.REPORTED_CPU_FEATURES | bench.INT8_CPU_FEATURES))
    # Not bench*.json: report reads those as training benches.
    records.write(args.output or "saved_models/inference.json", record)
    print(bench.inference_table(record), end="")
    return exit_status(results)


def run_processes(args, argv):
    from cifar_keras import records
    from cifar_keras.reporting import bench

    layouts = bench.parse_layouts(args.layouts)
    results = bench.run_processes_bench(args.model, layouts, args.batch_size, args.steps, args.warmup)
    record = run_record("bench_processes", argv, model=args.model, batch_size_per_process=args.batch_size,
                        steps=args.steps, warmup=args.warmup,
                        network_bytes="bytes this machine sent over all interfaces (loopback included) during the "
                        "timed steps, per step (/proc/net/dev)", results=results, backend="jax")
    records.write(args.output or "saved_models/processes.json", record)  # not bench*.json (training benches)
    print(bench.processes_table(record), end="")
    return exit_status(results)


def check_variant(model, name, options):
    """`options` if they make a valid config of `model` (checked here, in one line, before any subprocess)."""
    from cifar_keras.config import make_config

    if "epochs" in options or "batch_size" in options:
        raise UserError(f"--variant {name}: epochs and batch_size are the bench's own (--batch-size)")
    make_config(model, **options)
    return options


def run(args, argv):
    from cifar_keras import records
    from cifar_keras.reporting import bench

    if args.inference:
        return run_inference(args, argv)
    if args.layouts:
        return run_processes(args, argv)
    backends = comma_list("--backends", args.backends, bench.BACKENDS)
    precisions = comma_list("--precisions", args.precisions or "float32,bfloat16", bench.PRECISIONS)
    variants = [("recipe", {})] + [(name, check_variant(args.model, name, options))
                                   for name, options in args.variant or []]
    results = bench.run(args.model, backends, precisions, args.batch_size, args.steps, args.warmup, variants)
    records.write(args.output or "saved_models/bench.json",
                  run_record("bench", argv, model=args.model, batch_size=args.batch_size, steps=args.steps,
                             warmup=args.warmup, results=results))
    for r in results:
        speed = f"{r['train_images_per_s']:8.1f} img/s" if "error" not in r else f"failed: {r['error']}"
        print(f"{r['variant']:<15} {r['backend']:<11} {r['precision']:<15} {speed}")
    return exit_status(results)
