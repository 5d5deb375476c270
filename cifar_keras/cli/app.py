"""Command line: python -m cifar_keras {fit,launch,evaluate,calibrate,tune,export,predict,bench,report} ...
(see --help of each).

Each command is a module of this package: its `add_parser` beside its `run` handler, with the helpers that
several commands share in common.py. Training options come from the one run schema (config.RunConfig); Keras is
imported only by the handlers, so --help stays fast.
"""

import argparse
import sys
import traceback

from cifar_keras.cli import bench, calibrate, evaluate, export, fit, launch, predict, report, tune
from cifar_keras.distributed import multiworker
from cifar_keras.errors import UserError

COMMANDS = (fit, launch, evaluate, calibrate, tune, export, predict, bench, report)  # in --help's order


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cifar_keras", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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
