"""`launch`: N processes of one cluster (or a search's chief and workers) on this machine, supervised together."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

from cifar_keras.distributed.address import free_port
from cifar_keras.errors import UserError

PIN_AND_EXEC = "import os, sys; os.sched_setaffinity(0, {cores}); os.execvp(sys.argv[1], sys.argv[1:])"


def launch_command(arguments):
    """The argv each launched process runs, from `launch`'s command (a fit command, after `--`): with
    --distribute multiworker added when absent."""
    arguments = list(arguments)
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


def _exit_code(returncode):
    return 128 - returncode if returncode < 0 else returncode


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
