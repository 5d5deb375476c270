"""A Slurm job step as a cluster, read from its SLURM_* variables as jax.distributed.initialize reads them."""

import os
import re

from cifar_keras.errors import UserError

VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def first_node(node_list):
    """The first host of a Slurm node list: 'node001', 'node001,gpu1', 'node[001-015],gpu1' and
    'node[001,007-015]' and 'node[001]' all give node001."""
    prefix, bracket, rest = node_list.partition("[")
    if "," in prefix or not bracket:
        return prefix.split(",")[0]
    return prefix + re.split(r"[,\-\]]", rest)[0]


def integer(text, name):
    """`text` (the value of the variable `name`) as an int, or a one-line UserError."""
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {text!r}") from None


def slurm_cluster():
    """(coordinator, num_processes, process_id) of this Slurm job step, else None: the first node of
    SLURM_STEP_NODELIST, on JAX_COORDINATOR_PORT, else on a port of 61440..65535 from SLURM_JOB_ID."""
    if not all(name in os.environ for name in VARIABLES):
        return None
    def value(name):
        return integer(os.environ[name], name)

    port = os.environ.get("JAX_COORDINATOR_PORT") or str(value("SLURM_JOB_ID") % 4096 + 61440)
    return f"{first_node(os.environ['SLURM_STEP_NODELIST'])}:{port}", value("SLURM_NTASKS"), value("SLURM_PROCID")
