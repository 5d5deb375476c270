"""`launch`: the processes of a multiworker fit, or a tune's chief and workers, on this machine."""

import argparse

from cifar_keras.cli.common import positive_int
from cifar_keras.distributed.processes import launch_command, run_processes, supervise
from cifar_keras.errors import UserError
from cifar_keras.search import parallel


def add_parser(sub):
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
    parser.set_defaults(handler=run)


def run(args, argv):
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command[:1] == ["tune"]:  # the chief, then the workers
        if args.cores_per_process:
            raise UserError("--cores-per-process is for fit (a tune's workers share the machine's cores)")
        return supervise(parallel.launch_commands(command, args.processes))
    return run_processes(launch_command(command), args.processes, cores_per_process=args.cores_per_process)
