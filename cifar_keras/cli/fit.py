"""`fit`: train a model (alone, or as one process of a multiworker cluster)."""

from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras.cli import backend
from cifar_keras.cli.common import (add_data_dir, command_line, json_object, non_negative_int, positive_int,
                                   positive_seconds, reject_without)
from cifar_keras.config import MODEL_NAMES
from cifar_keras.errors import UserError
from cifar_keras.distributed import multiworker
from cifar_keras.distributed.cluster import DEFAULT_TIMEOUT as CLUSTER_TIMEOUT, resolve_cluster

# Every RunConfig field is a fit flag, except those given otherwise.
FIT_OPTIONS = [name for name in run_config.FIELDS if name not in ("model", "model_args")]


def add_parser(sub):
    parser = sub.add_parser(
        "fit", help="train a model, keep the best epoch by validation accuracy, test it once",
        description="Train MODEL on the training images minus a stratified validation split; keep the epoch with "
        "the best validation accuracy; evaluate it once on the test set; write OUTPUT_DIR/NAME.keras, NAME.json "
        "(run record) and NAME.log.csv. Rerun the same command to resume an interrupted run. What trains is, in "
        "this order: the recipe (MODEL's every option and builder argument, in cifar_keras/recipes.py) -> the "
        "tuned file (tuning/MODEL/best_hparams.json, or --hparams) -> the flags; each replaces what it sets.")
    groups = run_config.add_groups(parser)
    groups["model"].add_argument("model", choices=MODEL_NAMES)
    groups["model"].add_argument("--hparams", help="tuned hyperparameters (default: tuning/MODEL/best_hparams.json "
                                 "if it exists; 'none' for the built-in recipe); flags still override them")
    groups["model"].add_argument("--model-args", type=json_object, metavar="JSON",
                                 help="builder arguments, e.g. '{\"widths\": [64, 256, 512], \"stem\": \"whiten\"}' "
                                 "(see models/builders.py); they replace the recipe's and the tuned ones: '{}' builds "
                                 "the builder's defaults")
    add_data_dir(groups["data"])
    groups["hardware"].add_argument(
        "--backend", choices=backend.CHOICES,
        help="Keras backend to train on (default: KERAS_BACKEND, else tensorflow); auto: time a few training steps "
        "on each installed backend, side by side, and train on the fastest (about a minute per backend for the "
        "cnn; recorded as backend_probe). The saved model is the same on every backend")
    run_config.add_run_options(parser, groups, FIT_OPTIONS)
    groups["output"].add_argument("--output-dir", default="saved_models",
                                  help="where the model and records go (default: saved_models)")
    groups["output"].add_argument("--name", help="file name stem of the outputs (default: the model name)")
    groups["output"].add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard logs to DIR")
    groups["output"].add_argument("--overwrite", action="store_true",
                                  help="replace a finished run of the same name in OUTPUT_DIR (default: a new run "
                                  "beside it goes to OUTPUT_DIR/runs/NAME-N/)")
    cluster = parser.add_argument_group(
        "cluster (--distribute multiworker)",
        "Run the same fit command on every machine (KERAS_BACKEND=jax), each as one process of the cluster; process "
        "0 writes the outputs. Unset flags come from KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID, else from a Slurm job step. On one "
        "machine, `launch` starts them all.")
    cluster.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address and a free port on it")
    cluster.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the cluster")
    cluster.add_argument("--process-id", type=non_negative_int, metavar="I", help="this process's id, 0..N-1")
    cluster.add_argument("--cluster-timeout", type=positive_seconds,
                         default=CLUSTER_TIMEOUT, metavar="SECONDS",
                         help="how long the processes wait for each other to join, and after which a silent process "
                         f"counts as dead (default {CLUSTER_TIMEOUT})")
    parser.set_defaults(handler=run)


def cluster_of(args):
    """This process's cluster.Cluster (from the cluster flags, else Keras' or Slurm's variables), or None
    without --distribute multiworker."""
    if args.distribute != "multiworker":
        reject_without("--distribute multiworker", (("--coordinator", args.coordinator),
                                                    ("--num-processes", args.num_processes),
                                                    ("--process-id", args.process_id)))
        return None
    multiworker.check_backend()
    return resolve_cluster(args.coordinator, args.num_processes, args.process_id, args.cluster_timeout)


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


def run(args, argv):
    if args.backend is not None and args.distribute == "multiworker":
        raise UserError("--backend: a cluster's processes run on JAX (KERAS_BACKEND=jax), not chosen per process")
    status = backend.run_elsewhere(args, argv)
    if status is not None:  # trained on another backend, in a process of its own
        return status
    import keras

    from cifar_keras import models
    from cifar_keras.training import fit as training

    cluster = cluster_of(args)
    if cluster:  # joined before anything runs on JAX (checking --model-args builds a model)
        multiworker.join_cluster(cluster)
    hparams, provenance = resolve_hparams(args.hparams, args.model)
    model_args = args.model_args and models.check_model_args(args.model_args, args.model, "--model-args")
    config = run_config.make_config(args.model, hparams=hparams, model_args=model_args,
                                    **run_config.overrides(args, FIT_OPTIONS))
    callbacks = [keras.callbacks.TensorBoard(args.tensorboard)] if args.tensorboard else []
    team = multiworker.join(config, cluster) if cluster else None
    record = training.fit(config, data_dir=args.data_dir, output_dir=args.output_dir, name=args.name,
                          command=command_line(argv), hparams=provenance, extra_callbacks=callbacks, team=team,
                          overwrite=args.overwrite, record_extra={"backend_probe": backend.probe_of_this_run()})
    if record is None:  # a process other than 0 of a cluster
        print(f"process {cluster.process_id} of {cluster.num_processes}: training done; process 0 writes the model "
              "and the run record")
        return
    test, val = record["test"], record["val"]
    scores = (f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  superclass {test['superclass']:.2f}%"
              if test else f"val top-1 {val['top1']:.2f}% (test set not used)")
    print(f"{record['name']}: {scores}  ({record['train_wall_time_s']:.0f} s training) -> {record['files']['model']}")
