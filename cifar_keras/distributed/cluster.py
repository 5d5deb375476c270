"""The cluster of `fit --distribute multiworker`: process I of N, with process 0's HOST:PORT as the coordinator.

Each setting comes from its flag (--coordinator, --num-processes, --process-id), else from Keras' own
variables (KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES, _PROCESS_ID), else from a Slurm job step.
"""

import dataclasses
import os

from cifar_keras.distributed import address
from cifar_keras.distributed.slurm import integer, slurm_cluster
from cifar_keras.errors import UserError

DEFAULT_TIMEOUT = 120  # seconds: for every process to join, and after which a silent process counts as dead


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster: process `process_id` of `num_processes`, coordinator HOST:PORT."""

    coordinator: str
    num_processes: int
    process_id: int
    timeout: float = DEFAULT_TIMEOUT
    source: str = "flags"

    @property
    def host_port(self):
        """(HOST, PORT) of the coordinator, HOST as sockets take it."""
        host, port = address.parse(self.coordinator, "coordinator", "process 0's address and a free port")
        return address.unbracketed(host), port

    @property
    def loopback(self):
        """Whether every process runs on this machine (a loopback coordinator)."""
        return address.is_loopback(self.host_port[0])


def resolve_cluster(coordinator=None, num_processes=None, process_id=None, timeout=DEFAULT_TIMEOUT):
    """The Cluster of this process: each of the three from its flag, else from Keras' KERAS_DISTRIBUTION_*
    variable, else from Slurm's SLURM_* variables; one-line UserError when incomplete or inconsistent."""
    environ = os.environ
    sources = set()
    if coordinator is not None or num_processes is not None or process_id is not None:
        sources.add("flags")
    addresses = environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
    if coordinator is None and addresses:
        listed = [a.strip() for a in addresses.split(",") if a.strip()]
        coordinator = listed[0] if listed else None
        sources.add("KERAS_DISTRIBUTION_* variables")
        if num_processes is None and len(listed) > 1:
            num_processes = len(listed)
        elif len(listed) > 1 and len(listed) != num_processes:
            raise UserError(f"KERAS_DISTRIBUTION_JOB_ADDRESSES lists {len(listed)} processes, but the cluster has "
                            f"{num_processes}")
    if num_processes is None and environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        num_processes = integer(environ["KERAS_DISTRIBUTION_NUM_PROCESSES"], "KERAS_DISTRIBUTION_NUM_PROCESSES")
        sources.add("KERAS_DISTRIBUTION_* variables")
    if process_id is None and environ.get("KERAS_DISTRIBUTION_PROCESS_ID"):
        process_id = integer(environ["KERAS_DISTRIBUTION_PROCESS_ID"], "KERAS_DISTRIBUTION_PROCESS_ID")
        sources.add("KERAS_DISTRIBUTION_* variables")
    if None in (coordinator, num_processes, process_id):
        slurm = slurm_cluster()
        if slurm:
            coordinator = coordinator or slurm[0]
            num_processes = slurm[1] if num_processes is None else num_processes
            process_id = slurm[2] if process_id is None else process_id
            sources.add("Slurm")
    missing = [flag for flag, value in (("--coordinator HOST:PORT", coordinator),
                                        ("--num-processes N", num_processes), ("--process-id I", process_id))
               if value is None]
    if missing:
        raise UserError("--distribute multiworker needs the cluster: " + ", ".join(missing) + " (or Keras' "
                        "KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES, "
                        "KERAS_DISTRIBUTION_PROCESS_ID, or a Slurm job step); `launch` sets them for one machine")
    address.parse(coordinator, "coordinator", "process 0's address and a free port")
    if num_processes < 1:
        raise UserError(f"the number of processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UserError(f"process id {process_id} is outside 0..{num_processes - 1} (process ids of {num_processes} "
                        "processes)")
    if not timeout > 0:
        raise UserError(f"--cluster-timeout must be > 0, got {timeout}")
    return Cluster(coordinator, num_processes, process_id, float(timeout), " and ".join(sorted(sources)))
