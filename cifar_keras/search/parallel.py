"""Distributed `tune`: KerasTuner's own chief/worker mode, as command-line flags.

One process is the chief: it holds the search (KerasTuner's oracle), serves it over gRPC, trains
nothing, and once the search is over writes the summaries (best_hparams.json, trials.json,
search.json), once. Every other process is a worker (tuner0, tuner1, ...): it asks the chief for a
trial, trains it, reports the score, and asks again until the chief says the search is over; it
writes only KerasTuner's own working files (each trial's checkpoint) in its tuning folder. N workers
run N trials at once. KerasTuner reads the role from KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT; here they come from --tuner-id/--oracle, else from those variables.

Around KerasTuner's mode, this module adds what a command line needs:
- the chief's loop is KerasTuner's (its OracleServicer) without its 20-second polls, with a
  one-line error for a port it cannot listen on, and optionally (--workers N) waiting until N
  workers were told the search is over, so a worker that starts late is not left waiting; it saves
  the oracle after every trial's end too (KerasTuner's saved state still holds the last trials
  as running, and a resumed search would hand them to their workers again);
- workers give up after --oracle-timeout seconds without an answer from the chief (KerasTuner
  waits an hour) with one line, and wait a second before asking again while Hyperband's chief
  has no trial for them (KerasTuner asks again at once);
- `launch --workers N -- tune ...`: the chief and N workers on this machine, on a free loopback port.
"""

import contextlib
import dataclasses
import os
import re
import sys
import time
from concurrent import futures

from cifar_keras.distributed import address
from cifar_keras.errors import UserError

VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
DEFAULT_TIMEOUT = 300  # seconds: a worker waiting for the chief; the chief waiting for workers that never asked
TUNER_ID = re.compile(r"chief|tuner\d+")
ORACLE_MEANING = "the chief's address and a free port on it"


@dataclasses.dataclass(frozen=True)
class Role:
    """This process's part in a distributed search: tuner_id "chief" or "tunerN", the chief's HOST:PORT."""

    tuner_id: str
    oracle: str
    workers: int | None = None  # the chief waits until that many workers were told the search is over
    timeout: float = DEFAULT_TIMEOUT
    source: str = "flags"

    @property
    def chief(self):
        return self.tuner_id == "chief"

    @property
    def host_port(self):
        return address.parse(self.oracle, "oracle", ORACLE_MEANING)


def resolve_role(tuner_id=None, oracle=None, workers=None, timeout=DEFAULT_TIMEOUT):
    """This process's Role from the flags, else from KerasTuner's KERASTUNER_* variables; None for a search in
    one process. A one-line UserError when incomplete or malformed."""
    environ, source = os.environ, "flags"
    if tuner_id is None and oracle is None and any(name in environ for name in VARIABLES):
        source = "KerasTuner's KERASTUNER_* variables"
    if tuner_id is None and environ.get("KERASTUNER_TUNER_ID"):
        tuner_id = environ["KERASTUNER_TUNER_ID"]
    if oracle is None and (environ.get("KERASTUNER_ORACLE_IP") or environ.get("KERASTUNER_ORACLE_PORT")):
        if not (environ.get("KERASTUNER_ORACLE_IP") and environ.get("KERASTUNER_ORACLE_PORT")):
            raise UserError("KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT go together: set both (the chief's "
                            "address and port), or neither")
        oracle = f"{environ['KERASTUNER_ORACLE_IP']}:{environ['KERASTUNER_ORACLE_PORT']}"
    if tuner_id is None and oracle is None:
        if workers is not None:
            raise UserError("--workers is the chief's: give it with --tuner-id chief --oracle HOST:PORT")
        return None
    if oracle is None:
        raise UserError(f"tuner id {tuner_id!r} (--tuner-id or KERASTUNER_TUNER_ID) needs --oracle HOST:PORT, the "
                        "chief's address (or KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT)")
    if tuner_id is None:
        raise UserError("--oracle needs --tuner-id: chief for the process that holds the search, tuner0, tuner1, ... "
                        "for the workers")
    if not TUNER_ID.fullmatch(tuner_id):
        raise UserError(f"tuner id {tuner_id!r}: expected chief, or tunerN (tuner0, tuner1, ...) for a worker")
    address.parse(oracle, "oracle", ORACLE_MEANING)
    if not timeout > 0:
        raise UserError(f"--oracle-timeout must be > 0, got {timeout}")
    return Role(tuner_id, oracle, workers, float(timeout), source)


@contextlib.contextmanager
def environment(role):
    """KerasTuner's variables for `role` (none of them for a search in one process), and its workers' gRPC timeout,
    while the tuner is made and searches; restored afterwards."""
    saved = {name: os.environ.get(name) for name in VARIABLES}
    for name in VARIABLES:
        os.environ.pop(name, None)
    timeout = contextlib.nullcontext()
    if role is not None:
        host, port = role.host_port
        os.environ.update(KERASTUNER_TUNER_ID=role.tuner_id, KERASTUNER_ORACLE_IP=host,
                          KERASTUNER_ORACLE_PORT=str(port))
        if not role.chief:
            from cifar_keras.search.keras_tuner_internals import client_timeout

            timeout = client_timeout(role.timeout)
    try:
        with timeout:
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- the chief ----------------------------------------------------------------------------------

def serve(tuner, role):
    """The chief: KerasTuner's oracle service (gRPC) on role.oracle until the search is over, i.e. every trial has
    ended and every worker that asked for one was told to stop (with role.workers: that many workers were, or
    role.timeout seconds passed since the last trial ended). Returns {tuner id: [trial ids it was given]} of every
    worker that asked."""
    import grpc

    from cifar_keras.search import keras_tuner_internals as internals

    oracle = tuner.oracle
    given, stopped = {}, set()

    class Servicer(internals.OracleServicer):
        def CreateTrial(self, request, context):  # KerasTuner's, noting who runs what
            trial = self.oracle.create_trial(request.tuner_id)
            given.setdefault(request.tuner_id, [])
            if trial.status == "STOPPED":
                self.stop_triggered = True
                stopped.add(request.tuner_id)
            elif trial.status == "RUNNING" and trial.trial_id not in given[request.tuner_id]:
                given[request.tuner_id].append(trial.trial_id)
            return internals.create_trial_response(trial)

        def EndTrial(self, request, context):
            # KerasTuner's oracle saves itself before it lets go of the ended trial, and a worker does not save
            # it: saved again, a resumed search does not hand the finished trial to its worker once more.
            response = super().EndTrial(request, context)
            self.oracle.save()
            return response

    # Trials that ended but are still held for a worker (saved so by KerasTuner's own chief) are let go.
    for tuner_id, trial in list(oracle.ongoing_trials.items()):
        if trial.status != "RUNNING":
            del oracle.ongoing_trials[tuner_id]
    servicer = Servicer(oracle)
    # One thread, as KerasTuner's; no SO_REUSEPORT, so that a port in use is an error, not a second chief.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)])
    internals.add_servicer(servicer, server)
    try:
        bound = server.add_insecure_port(address.listen_address(*role.host_port))
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"chief: cannot listen on {role.oracle} (port in use, or not an address of this machine): "
                        "choose another --oracle port")
    tuner.save()  # as KerasTuner's chief does before serving
    server.start()
    print(f"chief: the search's oracle listens on {role.oracle} (from {role.source}); workers join with --tuner-id "
          f"tuner0, tuner1, ... --oracle {role.oracle}", flush=True)
    for tuner_id, trial in oracle.ongoing_trials.items():
        print(f"chief: trial {trial.trial_id} of {tuner_id} was interrupted: it reruns when {tuner_id} asks again "
              f"(start {tuner_id})", flush=True)
    over_since = None
    try:
        while True:
            time.sleep(0.2)
            if not (servicer.stop_triggered and internals.exit_chief(oracle)):
                over_since = None
                continue
            over_since = over_since or time.monotonic()
            if role.workers is None or len(stopped) >= role.workers:
                break
            if time.monotonic() - over_since > role.timeout:
                print(f"chief: {role.workers - len(stopped)} of {role.workers} workers never asked for a trial "
                      f"within {role.timeout:g} s of the search's end; finishing without them", flush=True)
                break
    finally:
        server.stop(grace=2).wait()
    return {tuner_id: trials for tuner_id, trials in sorted(given.items())}


# --- a worker -----------------------------------------------------------------------------------

def work(tuner, role, **search_kwargs):
    """A worker: trials from the chief until it says the search is over. Returns the ids of the trials it ran."""
    import grpc

    client, ran = tuner.oracle, []
    ask = client.create_trial

    def create_trial(tuner_id):
        trial = ask(tuner_id)
        if trial.status == "IDLE":  # Hyperband waits for a bracket's trials: ask again in a second, not at once
            time.sleep(1)
        elif trial.status == "RUNNING" and trial.trial_id not in ran:
            ran.append(trial.trial_id)
        return trial

    client.create_trial = create_trial
    print(f"{role.tuner_id}: worker of the search whose chief is at {role.oracle} (from {role.source})", flush=True)
    try:
        tuner.search(**search_kwargs)
    except grpc.RpcError as e:
        code = e.code() if callable(getattr(e, "code", None)) else None
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise UserError(f"{role.tuner_id}: no chief answered at {role.oracle} within {role.timeout:g} s: start it "
                            f"(tune ... --tuner-id chief --oracle {role.oracle}) or correct --oracle (a finished "
                            "search needs no workers)") from None
        details = str(e.details() if callable(getattr(e, "details", None)) else e).strip().splitlines()
        raise UserError(f"{role.tuner_id}: the chief at {role.oracle} failed ({getattr(code, 'name', code)}"
                        f"{': ' + details[-1] if details else ''}); see its output") from None
    return ran


# --- launch: the chief and N workers on this machine ----------------------------------------------

def launch_commands(arguments, workers, host="127.0.0.1"):
    """The argv of the chief and of each of `workers` workers, from `launch`'s command (a tune command, after `--`),
    on a free port of `host`."""
    arguments = list(arguments)
    if arguments[:1] != ["tune"]:
        raise UserError("launch --workers N -- tune MODEL ...: expected a tune command")
    for flag in ("--tuner-id", "--oracle", "--workers"):
        if any(a == flag or a.startswith(flag + "=") for a in arguments):
            raise UserError(f"launch sets the chief and the workers itself: drop {flag}")
    oracle = f"{host}:{address.free_port(host)}"
    base = [sys.executable, "-m", "cifar_keras", *arguments]
    return ([[*base, "--tuner-id", "chief", "--oracle", oracle, "--workers", str(workers)]]
            + [[*base, "--tuner-id", f"tuner{i}", "--oracle", oracle] for i in range(workers)])
