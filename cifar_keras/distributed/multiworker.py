"""`fit --distribute multiworker`: this process joins JAX's distributed runtime as its place in the cluster.

Each machine (or each process of one machine) runs the same `fit` command as one process of a
cluster (cluster.py says which). The engine is Keras' on JAX: JAX's distributed runtime (what
keras.distribution.initialize starts), `keras.distribution.DataParallel` over every process's devices
trains, and Keras shards each global batch of the tf.data pipeline between the processes.

Around it, this module adds what a command line needs: the check that the processes form one
cluster before JAX's runtime starts (rendezvous.py), a Team that shares process 0's run folder
(team.py), and the cluster left (jax.distributed.shutdown) when training ends: process 0 then
finalises alone, and a failing process exits at once instead of waiting at JAX's shutdown barrier.
"""

import hashlib
import json
import os
import re
import shutil
import sys

from cifar_keras.distributed import address
from cifar_keras.distributed.cluster import resolve_cluster
from cifar_keras.distributed.rendezvous import rendezvous
from cifar_keras.distributed.team import Team
from cifar_keras.errors import UserError
from cifar_keras.hardware import NEEDS_JAX

# Messages of the errors a collective step raises when another process of the cluster is gone.
LOST_PROCESS = re.compile(r"gloo|nccl|connection (reset|refused|closed)|broken pipe|socket closed|unavailable|"
                          r"heartbeat|deadline_exceeded|coordination service", re.IGNORECASE)


def check_backend():
    import keras

    if keras.backend.backend() != "jax":
        raise UserError(NEEDS_JAX)


def initialize(cluster):
    """Start JAX's distributed runtime as keras.distribution.initialize does (jax.distributed.initialize), with
    this cluster's timeouts (Keras passes none, and JAX's defaults wait 300 s for the processes to join and 100 s
    before it declares a silent process dead), its coordinator listening on loopback alone for a loopback
    coordinator. (Keras then also agrees a random seed between the processes when none is set; fit sets one, the
    same in every process of the cluster.)"""
    import jax

    timeout = max(1, round(cluster.timeout))
    host, port = address.parse(cluster.coordinator, "coordinator", "process 0's address and a free port")
    jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id,
                               initialization_timeout=timeout, heartbeat_timeout_seconds=timeout,
                               shutdown_timeout_seconds=timeout,
                               coordinator_bind_address=address.listen_address(host, port))


def fingerprint(config):
    """What every process of one run must agree on: its RunConfig."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def join_cluster(cluster):
    """This process's Team in `cluster`, checked (rendezvous) and joined (JAX's distributed runtime), which must
    come before anything runs on JAX; the same Team when called again."""
    if Team.current is not None:
        return Team.current
    check_backend()
    import jax

    if jax.distributed.is_initialized():
        raise UserError("this process already belongs to a cluster: run each multiworker fit in a fresh process")
    rendezvous(cluster)
    try:
        initialize(cluster)
    except RuntimeError as e:
        if "must be called before" not in str(e):
            raise
        raise UserError("--distribute multiworker: the cluster must be joined before anything runs on JAX (give "
                        "--distribute multiworker on the command line)") from None
    Team.current = Team(cluster.process_id, cluster.num_processes, None, cluster)
    print(f"fit: process {cluster.process_id} of {cluster.num_processes} joined the cluster of coordinator "
          f"{cluster.coordinator} (from {cluster.source})", flush=True)
    return Team.current


def join(config, cluster=None):
    """The Team of this process for a fit of `config`: a team of one, or with --distribute multiworker, this
    process in `cluster` (default: from the environment; joined here unless it was before), once every process
    is known to train the same run."""
    if config.distribute != "multiworker":
        return Team()
    check_backend()
    if config.time_budget:
        raise UserError("--time-budget does not go with --distribute multiworker (each process would time its own "
                        "machine): set --epochs")
    team = join_cluster(cluster or resolve_cluster())
    team.check_same_run(fingerprint(config))
    return team


def in_cluster():
    """Whether this process is in a cluster it has not left."""
    return Team.current is not None


def explain(error):
    """A one-line message for an error that stopped a process of a cluster during training, or None."""
    team = Team.current
    if team is None or isinstance(error, UserError):
        return None
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if LOST_PROCESS.search(str(error)):
        return (f"process {team.process_id} of {team.processes}: another process of the cluster stopped "
                f"({first[:200]}); see its output, then rerun the same commands to resume from the last finished epoch")
    return None


def abandon(code):
    """Exit now if this process is still in a cluster (after an error): without JAX's shutdown barrier, which would
    wait for the other processes; returns `code` otherwise."""
    team = Team.current
    if team is None:
        return code
    if team.scratch:
        shutil.rmtree(team.scratch, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
