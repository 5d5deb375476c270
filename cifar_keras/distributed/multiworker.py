"""Several machines: `fit --distribute multiworker` on JAX's distributed runtime, and `launch`.

Each machine (or each process of one machine) runs the same `fit` command as one process of a
cluster: process I of N, with process 0's HOST:PORT as the coordinator. The cluster comes from
--coordinator/--num-processes/--process-id, else from Keras' own variables
(KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES, _PROCESS_ID), else from a Slurm job step
(SLURM_*, resolved as JAX does). The engine is Keras': `keras.distribution.initialize` joins JAX's
distributed runtime, `keras.distribution.DataParallel` over every process's devices trains, and
Keras shards each global batch of the tf.data pipeline between the processes.

Around it, this module adds what a command line needs:
- a check that the processes form one cluster before JAX's runtime starts (JAX reports a wrong
  coordinator, a mismatched process count or a repeated process id only by aborting the process
  with a C++ fatal error after its timeout; here each gives one line);
- process 0's run folder shared with the others at the start, so that every process resumes from
  the same checkpoint (the others keep theirs in a private scratch folder; only process 0 writes in
  the output folder);
- the cluster left (jax.distributed.shutdown) when training ends: process 0 then finalises alone,
  and a failing process exits at once instead of waiting at JAX's shutdown barrier;
- `launch`: N processes on this machine, on a free loopback port.
"""

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifar_keras.errors import UserError

DEFAULT_TIMEOUT = 120  # seconds: for every process to join, and after which a silent process counts as dead
NEEDS_JAX = ("--distribute multiworker runs on JAX's distributed runtime: set KERAS_BACKEND=jax (TensorFlow's "
             "MultiWorkerMirroredStrategy fails inside Keras 3's fit: keras-team/keras#20585)")
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
# Messages of the errors a collective step raises when another process of the cluster is gone.
LOST_PROCESS = re.compile(r"gloo|nccl|connection (reset|refused|closed)|broken pipe|socket closed|unavailable|"
                          r"heartbeat|deadline_exceeded|coordination service", re.IGNORECASE)


def check_backend():
    import keras

    if keras.backend.backend() != "jax":
        raise UserError(NEEDS_JAX)


# --- the cluster -------------------------------------------------------------------------------

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
        host, port = self.coordinator.rsplit(":", 1)
        return host.strip("[]"), int(port)


def _integer(text, name):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {text!r}") from None


def slurm_cluster():
    """(coordinator, num_processes, process_id) of a Slurm job step, as jax.distributed.initialize derives them
    (first node of SLURM_STEP_NODELIST, port from SLURM_JOB_ID or JAX_COORDINATOR_PORT), else None."""
    if not all(name in os.environ for name in SLURM_VARIABLES):
        return None
    from jax._src.clusters.slurm_cluster import SlurmCluster

    return (SlurmCluster.get_coordinator_address(None, os.environ.get("JAX_COORDINATOR_PORT")),
            SlurmCluster.get_process_count(), SlurmCluster.get_process_id())


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
        num_processes = _integer(environ["KERAS_DISTRIBUTION_NUM_PROCESSES"], "KERAS_DISTRIBUTION_NUM_PROCESSES")
        sources.add("KERAS_DISTRIBUTION_* variables")
    if process_id is None and environ.get("KERAS_DISTRIBUTION_PROCESS_ID"):
        process_id = _integer(environ["KERAS_DISTRIBUTION_PROCESS_ID"], "KERAS_DISTRIBUTION_PROCESS_ID")
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
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"coordinator {coordinator!r}: expected HOST:PORT (process 0's address and a free port)")
    if num_processes < 1:
        raise UserError(f"the number of processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UserError(f"process id {process_id} is outside 0..{num_processes - 1} (process ids of {num_processes} "
                        "processes)")
    if not timeout > 0:
        raise UserError(f"--cluster-timeout must be > 0, got {timeout}")
    return Cluster(coordinator, num_processes, process_id, float(timeout), " and ".join(sorted(sources)))


# --- the check before JAX's runtime starts --------------------------------------------------------

def _send(conn, message):
    conn.sendall((json.dumps(message) + "\n").encode())


def _receive(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    try:
        return json.loads(data)
    except ValueError:
        return None


def rendezvous(cluster):
    """Check that the processes form one cluster, before JAX's runtime starts: process 0 listens on the
    coordinator's port for the others (each says its process id and number of processes) and answers every
    one with the verdict. A one-line UserError on every process otherwise: nobody at the coordinator, a busy
    port, a different number of processes, a repeated process id, or processes missing after
    `cluster.timeout` seconds."""
    deadline = time.monotonic() + cluster.timeout
    hello = {"process_id": cluster.process_id, "num_processes": cluster.num_processes}
    if cluster.num_processes == 1:
        return
    if cluster.process_id == 0:
        return _coordinate(cluster, hello, deadline)
    host, port = cluster.host_port
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise UserError(f"process {cluster.process_id}: nothing answered at {cluster.coordinator} within "
                                f"{cluster.timeout:g} s: start process 0 with that --coordinator (it listens on that "
                                "port), or correct --coordinator") from None
            time.sleep(0.25)
    with conn:
        conn.settimeout(cluster.timeout + 10)  # process 0 answers when all have joined, or after its own timeout
        try:
            _send(conn, hello)
            verdict = _receive(conn)
        except OSError:
            verdict = None
    if not isinstance(verdict, dict) or not ("ok" in verdict or "error" in verdict):
        raise UserError(f"process {cluster.process_id}: no cifar_keras process 0 answered at {cluster.coordinator}: "
                        "correct --coordinator")
    if "error" in verdict:
        raise UserError(verdict["error"])


def _coordinate(cluster, hello, deadline):
    _, port = cluster.host_port
    try:
        if socket.has_dualstack_ipv6():
            listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            listener = socket.create_server(("", port))
    except OSError as e:
        raise UserError(f"process 0 cannot listen on port {port} ({e.strerror}): another process 0 (a repeated "
                        "--process-id 0) or another program holds it; choose another port in --coordinator") from None
    n = cluster.num_processes
    joined, error = {}, None  # process id -> connection
    connections = []
    listener.settimeout(0.2)
    try:
        while len(joined) < n - 1 and error is None:
            if time.monotonic() >= deadline:
                missing = [str(i) for i in range(1, n) if i not in joined]
                error = (f"only {len(joined) + 1} of {n} processes joined within {cluster.timeout:g} s (missing: "
                         f"process {', '.join(missing)}): start them with --coordinator {cluster.coordinator} "
                         f"--num-processes {n} (or raise --cluster-timeout)")
                break
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            connections.append(conn)
            conn.settimeout(10)
            try:
                other = _receive(conn)
            except OSError:
                other = None
            if not isinstance(other, dict):
                continue  # not one of ours (a port scan, ...)
            i, others_n = other.get("process_id"), other.get("num_processes")
            if others_n != n:
                error = (f"process {i} was started with {others_n} processes, process 0 with {n}: give every "
                         "process the same --num-processes")
            elif i in joined or i == 0:
                error = (f"two processes were started with process id {i}: give each process its own --process-id "
                         f"in 0..{n - 1}")
            else:
                joined[i] = conn
        verdict = {"error": error} if error else {"ok": True}
        for conn in connections:
            with contextlib.suppress(OSError):
                _send(conn, verdict)
        for conn in connections:  # they close first: the port is free again for JAX's coordinator
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.recv(1)
    finally:
        for conn in connections:
            conn.close()
        listener.close()
    if error:
        raise UserError(error)


# --- the team of processes ------------------------------------------------------------------------

class Team:
    """The processes training together. A single process is a team of one (nothing to share, nothing to leave)."""

    def __init__(self, process_id=0, processes=1, scratch=None, cluster=None):
        self.process_id, self.processes, self.scratch, self.cluster = process_id, processes, scratch, cluster

    @property
    def primary(self):
        """Process 0: the one that writes files."""
        return self.process_id == 0

    def broadcast(self, data=None):
        """Process 0's `data` (bytes) on every process."""
        import numpy as np
        from jax.experimental import multihost_utils

        size = multihost_utils.broadcast_one_to_all(np.array(len(data) if self.primary else 0, np.int32))
        buffer = np.frombuffer(data, np.uint8) if self.primary else np.zeros(int(size), np.uint8)
        return multihost_utils.broadcast_one_to_all(buffer).tobytes()

    def share(self, make):
        """Runs make() -> (value, files) on process 0 (value: JSON, files: {name: bytes}); every process gets
        (value, files). A UserError of make() is raised on every process."""
        if self.processes == 1:
            return make()
        if self.primary:
            try:
                value, files = make()
            except UserError as e:
                self.broadcast(_pack({"error": str(e)}, {}))
                raise
            self.broadcast(_pack({"value": value}, files))
            return value, files
        header, files = _unpack(self.broadcast())
        if "error" in header:
            raise UserError(f"process 0: {header['error']}")
        return header["value"], files

    def make_scratch(self, run):
        """A private, empty scratch folder of this process (not process 0) for the run named `run` (a string naming
        the output folder, the run and its config): the same one when the run is resumed, so that it replaces what
        a process that crashed left there."""
        import hashlib

        key = hashlib.sha256(run.encode()).hexdigest()[:16]
        self.scratch = Path(tempfile.gettempdir()) / f"cifar_keras-{key}-process{self.process_id}"
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        return self.scratch

    def check_same_run(self, fingerprint):
        """A UserError on every process unless all train the same run (the same RunConfig)."""
        if self.processes == 1:
            return
        import numpy as np
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.frombuffer(fingerprint.encode(), np.uint8))
        others = [i for i, row in enumerate(np.asarray(gathered).reshape(self.processes, -1))
                  if row.tobytes() != np.asarray(gathered).reshape(self.processes, -1)[0].tobytes()]
        if others:
            raise UserError(f"process {', '.join(map(str, others))} of {self.processes} would train another run than "
                            "process 0 (options, recipe or tuned hyperparameters differ): give every process the same "
                            "fit command and files")

    def leave(self):
        """Leave the cluster once training is done (a barrier: JAX's shutdown); True on process 0, which goes on
        alone, False on the others, whose scratch folder is removed."""
        if self.processes > 1 or self.cluster is not None:
            import jax

            jax.distributed.shutdown()
            _joined.clear()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.primary


def _pack(header, files):
    header = {**header, "files": {name: len(data) for name, data in files.items()}}
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(files.values())


def _unpack(data):
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    files, offset = {}, 8 + size
    for name, length in header.pop("files").items():
        files[name] = data[offset:offset + length]
        offset += length
    return header, files


_joined = []  # the Team of this process while it is in a cluster


def initialize(cluster):
    """keras.distribution.initialize, with this cluster's timeouts for JAX (Keras passes none, and JAX's defaults
    wait 300 s for the processes to join and 100 s before it declares a silent process dead)."""
    import jax
    import keras

    timeout = max(1, round(cluster.timeout))
    original = jax.distributed.initialize
    jax.distributed.initialize = functools.partial(original, initialization_timeout=timeout,
                                                   heartbeat_timeout_seconds=timeout,
                                                   shutdown_timeout_seconds=timeout)
    try:
        keras.distribution.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id)
    finally:
        jax.distributed.initialize = original


def fingerprint(config):
    """What every process of one run must agree on: its RunConfig."""
    import hashlib

    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def join_cluster(cluster):
    """This process's Team in `cluster`, checked (rendezvous) and joined (JAX's distributed runtime), which must
    come before anything runs on JAX; the same Team when called again."""
    if _joined:
        return _joined[0]
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
    team = Team(cluster.process_id, cluster.num_processes, None, cluster)
    _joined[:] = [team]
    print(f"fit: process {cluster.process_id} of {cluster.num_processes} joined the cluster of coordinator "
          f"{cluster.coordinator} (from {cluster.source})", flush=True)
    return team


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
    return bool(_joined)


def explain(error):
    """A one-line message for an error that stopped a process of a cluster during training, or None."""
    if not _joined or isinstance(error, UserError):
        return None
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if LOST_PROCESS.search(str(error)):
        team = _joined[0]
        return (f"process {team.process_id} of {team.processes}: another process of the cluster stopped "
                f"({first[:200]}); see its output, then rerun the same commands to resume from the last finished epoch")
    return None


def abandon(code):
    """Exit now if this process is still in a cluster (after an error): without JAX's shutdown barrier, which would
    wait for the other processes; returns `code` otherwise."""
    if not _joined:
        return code
    team = _joined[0]
    if team.scratch:
        shutil.rmtree(team.scratch, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- launch: N processes on this machine --------------------------------------------------------

def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _exit_code(returncode):
    return 128 - returncode if returncode < 0 else returncode


PIN_AND_EXEC = "import os, sys; os.sched_setaffinity(0, {cores}); os.execvp(sys.argv[1], sys.argv[1:])"


def core_shares(processes, cores_per_process):
    """Disjoint sets of `cores_per_process` of this process's logical CPUs, in number order, one per process, or a
    one-line error when there are not enough (or no way to pin: Linux only)."""
    if not hasattr(os, "sched_getaffinity"):
        raise UserError("pinning processes to cores needs Linux (os.sched_setaffinity)")
    available = sorted(os.sched_getaffinity(0))
    if processes * cores_per_process > len(available):
        raise UserError(f"{processes} processes x {cores_per_process} cores need {processes * cores_per_process} "
                        f"cores; this machine gives {len(available)}")
    return [available[i * cores_per_process:(i + 1) * cores_per_process] for i in range(processes)]


def run_processes(command, processes, env=None, host="127.0.0.1", port=None, grace=10.0, cores_per_process=None):
    """Run `command` (an argv) as processes 0..N-1 of one cluster on `host`:`port` (default: a free loopback port),
    via Keras' KERAS_DISTRIBUTION_* variables (KERAS_BACKEND=jax unless set), each pinned to its own
    `cores_per_process` cores if given. Process 0's output goes to this process's; the others' to files, shown (last
    lines) if they fail. When one fails, the others are interrupted (SIGINT, then SIGKILL after `grace` seconds).
    Returns the exit code: 0, or the first failing process's."""
    cores = core_shares(processes, cores_per_process) if cores_per_process else None
    port = port or free_port(host)
    env = dict(os.environ if env is None else env)
    env.setdefault("KERAS_BACKEND", "jax")
    env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"{host}:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES=str(processes))
    environments = [{**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)} for i in range(processes)]
    return supervise([command] * processes, environments, grace, cores)


def supervise(commands, environments=None, grace=10.0, cores=None):
    """Run each argv of `commands` as process i (with environments[i], default this process's; pinned to cores[i]
    if given, before it starts, so that its thread pools size themselves to them), as run_processes does: process
    0's output shown, the others' last lines if they fail, all stopped when one fails. Returns the exit code: 0, or
    the first failing process's."""
    processes = len(commands)
    environments = environments or [dict(os.environ)] * processes
    running, logs = [], []
    try:
        for i, (command, env) in enumerate(zip(commands, environments)):
            log = None if i == 0 else tempfile.TemporaryFile()
            logs.append(log)
            if cores:  # pinned by a small Python that then becomes the command (preexec_fn is unsafe with threads)
                command = [sys.executable, "-c", PIN_AND_EXEC.format(cores=list(cores[i])), *command]
            running.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None))
        failed = None
        while failed is None and any(p.poll() is None for p in running):
            failed = next((i for i, p in enumerate(running) if p.poll() not in (None, 0)), None)
            if failed is None:
                time.sleep(0.1)
        if failed is None:
            failed = next((i for i, p in enumerate(running) if p.returncode), None)
        if failed is None:
            return 0
        code = _exit_code(running[failed].returncode)
        _stop(running, grace)
        if logs[failed] is not None:
            logs[failed].seek(0)
            tail = logs[failed].read().decode(errors="replace").strip().splitlines()[-15:]
            print(f"launch: process {failed} exited with code {code}; its last output lines:", file=sys.stderr)
            for line in tail:
                print(f"  [{failed}] {line}", file=sys.stderr)
        print(f"launch: process {failed} of {processes} failed (exit code {code}); the others were stopped",
              file=sys.stderr)
        return code
    except KeyboardInterrupt:
        _stop(running, grace)
        return 130
    finally:
        _stop(running, 0)
        for log in logs:
            if log is not None:
                log.close()


def _stop(running, grace):
    alive = [p for p in running if p.poll() is None]
    for p in alive:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGINT if grace else signal.SIGKILL)
    end = time.monotonic() + grace
    for p in alive:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_command(arguments):
    """The argv each launched process runs, from `launch`'s arguments after `--` (a fit command): with
    --distribute multiworker added when absent."""
    arguments = list(arguments)
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    if not arguments or arguments[0] != "fit":
        raise UserError("launch runs a fit command: python -m cifar_keras launch --processes N -- fit MODEL ... (or "
                        "a tune command: launch --workers N -- tune MODEL ...)")
    given = [a for a in arguments if a == "--distribute" or a.startswith("--distribute=")]
    if not given:
        arguments += ["--distribute", "multiworker"]
    else:
        index = arguments.index(given[0])
        value = given[0].split("=", 1)[1] if "=" in given[0] else (arguments[index + 1:index + 2] or [""])[0]
        if value != "multiworker":
            raise UserError(f"launch runs --distribute multiworker, not --distribute {value}")
    for flag in ("--coordinator", "--num-processes", "--process-id"):
        if any(a == flag or a.startswith(flag + "=") for a in arguments):
            raise UserError(f"launch sets the cluster itself: drop {flag}")
    return [sys.executable, "-m", "cifar_keras", *arguments]
