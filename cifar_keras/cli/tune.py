"""`tune`: a KerasTuner search (alone, or as the chief or a worker of a distributed search)."""

from pathlib import Path

from cifar_keras import config as run_config
from cifar_keras.cli.common import add_data_dir, command_line, positive, positive_int, positive_seconds
from cifar_keras.config import MODEL_NAMES
from cifar_keras.search import parallel

TUNE_OPTIONS = ["train_size", "val_size", "seed", "precision"]  # the rest is what the search varies


def budget(text):
    return text if text == "recipe" else positive(float, "must be 'recipe' or a positive number of minutes")(text)


def add_parser(sub):
    parser = sub.add_parser(
        "tune", help="KerasTuner search; the best trial goes to tuning/MODEL/best_hparams.json",
        description="Search MODEL's hyperparameter space (see cifar_keras/models/spaces.py) with KerasTuner, scored by validation "
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
    distributed.add_argument("--oracle-timeout", type=positive_seconds,
                             default=parallel.DEFAULT_TIMEOUT, metavar="SECONDS",
                             help="how long a worker waits for the chief's answer, and the chief (with --workers), "
                             "after the last trial, for workers that never asked "
                             f"(default {parallel.DEFAULT_TIMEOUT})")
    parser.set_defaults(handler=run)


def run(args, argv):
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
