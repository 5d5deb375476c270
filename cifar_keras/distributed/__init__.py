"""Several processes or machines: `fit --distribute multiworker` on JAX's distributed runtime, and `launch`.

address.py (HOST:PORT), cluster.py (this process's place: flags, Keras' variables) with slurm.py (a Slurm job
step), rendezvous.py (the check before JAX's runtime starts), team.py (what process 0 shares), multiworker.py
(joining and leaving the cluster), processes.py (N processes on this machine).
"""
