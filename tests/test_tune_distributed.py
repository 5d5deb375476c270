"""Distributed tuning with KerasTuner's chief and workers, on loopback ports: the flags, the one-line errors, three
processes as on three machines (each its own tuning folder), then `launch --workers N -- tune` on one."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import pytest

from cifar_keras import cli
from cifar_keras.search import parallel
from cifar_keras.errors import UserError
from cifar_keras.distributed.address import free_port, listen_address

TINY = ["tune", "mlp", "--tuner", "random", "--epochs", "1", "--train-size", "300", "--val-size", "100",
        "--precision", "float32"]
HANG = 240  # seconds: a distributed search that takes longer has hung (it takes well under a minute)


def child_env(tmp_path):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in (*parallel.VARIABLES, "CIFAR100_DATA_DIR"):
        env.pop(name, None)
    return env


def finish(processes, names):
    """[(exit code, stdout, stderr)] of `processes`; all are killed, and the test fails, if any runs past HANG s."""
    deadline, results = time.monotonic() + HANG, []
    try:
        for p in processes:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        tails = [f"--- {name}:\n{(p.communicate()[1] or '')[-1500:]}" for name, p in zip(names, processes)]
        pytest.fail(f"the distributed search hung for {HANG} s\n" + "\n".join(tails))
    for name, (code, out, err) in zip(names, results):
        assert code == 0, f"{name} exited with {code}:\n{out[-1500:]}\n{err[-3000:]}"
    return results


def test_role_from_flags_or_keras_tuner_variables(monkeypatch):
    for name in parallel.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert parallel.resolve_role() is None
    role = parallel.resolve_role("chief", "10.0.0.1:8000", workers=2)
    assert role.chief and role.host_port == ("10.0.0.1", 8000) and role.workers == 2 and role.source == "flags"
    assert listen_address(*role.host_port) == "[::]:8000"  # every interface: the workers are elsewhere
    local = parallel.resolve_role("chief", "127.0.0.1:8000")
    assert listen_address(*local.host_port) == "127.0.0.1:8000"  # one machine: loopback only
    for tuner_id, oracle, workers, message in (
            ("tuner0", None, None, "needs --oracle HOST:PORT"),
            (None, "h:8000", None, "--oracle needs --tuner-id"),
            ("worker1", "h:8000", None, "expected chief, or tunerN"),
            ("tuner1", "h", None, "expected HOST:PORT"),
            ("tuner1", "h:0", None, "expected HOST:PORT"),
            (None, None, 2, "--workers is the chief's")):
        with pytest.raises(UserError, match=message):
            parallel.resolve_role(tuner_id, oracle, workers)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner3")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "chief.example")
    with pytest.raises(UserError, match="KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT go together"):
        parallel.resolve_role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "9000")
    role = parallel.resolve_role()
    assert (role.tuner_id, role.oracle, role.chief) == ("tuner3", "chief.example:9000", False)
    assert "KERASTUNER_" in role.source
    assert parallel.resolve_role("tuner0").tuner_id == "tuner0"  # a flag wins over its variable
    with parallel.environment(None):  # a search in one process sees none of them
        assert not any(name in os.environ for name in parallel.VARIABLES)
    assert os.environ["KERASTUNER_TUNER_ID"] == "tuner3"  # and they are back afterwards


def test_keras_tuner_internals_are_those_of_the_installed_keras_tuner(tmp_path):
    """keras_tuner.src, which has no stable API, is used in one module, for the KerasTuner versions pyproject.toml
    allows: the installed one is one of them, and what the chief and the workers use of it works as they use it."""
    import tomllib

    import grpc
    import keras_tuner
    from importlib.metadata import version
    from packaging.requirements import Requirement

    from cifar_keras.search import keras_tuner_internals as internals

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    [pinned] = [Requirement(r) for r in project["project"]["dependencies"] if Requirement(r).name == "keras-tuner"]
    assert pinned.specifier.contains(version("keras-tuner")) and not pinned.specifier.contains("1.5.0")

    def build(hp):
        hp.Int("units", 1, 4)

    objective = keras_tuner.Objective("score", "max")
    # The chief's service on a real oracle: a trial for a worker, its end, then the search's end.
    oracle = keras_tuner.RandomSearch(build, objective=objective, max_trials=1, directory=str(tmp_path),
                                      project_name="chief").oracle
    servicer = internals.OracleServicer(oracle)
    assert not servicer.stop_triggered and internals.exit_chief(oracle)
    trial = oracle.create_trial("tuner0")
    assert trial.status == "RUNNING" and not internals.exit_chief(oracle)
    assert internals.create_trial_response(trial).trial.trial_id == trial.trial_id
    oracle.update_trial(trial.trial_id, {"score": 1.0})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    servicer.CreateTrial(type("Request", (), {"tuner_id": "tuner0"}), None)  # max_trials reached: told to stop
    assert servicer.stop_triggered and internals.exit_chief(oracle)
    internals.add_servicer(servicer, grpc.server(futures.ThreadPoolExecutor(max_workers=1)))

    # A worker's gRPC calls give up after --oracle-timeout (KerasTuner's: an hour), with nobody at the chief's port.
    role = parallel.resolve_role("tuner0", f"127.0.0.1:{free_port()}", timeout=0.5)
    started = time.monotonic()
    with parallel.environment(role), pytest.raises(grpc.RpcError) as error:
        worker = keras_tuner.RandomSearch(build, objective=objective, max_trials=1, directory=str(tmp_path),
                                          project_name="worker")
        worker.oracle.create_trial("tuner0")
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 10


def test_launch_commands_and_their_errors():
    chief, *workers = parallel.launch_commands(TINY, 2)
    assert chief[1:3] == ["-m", "cifar_keras"] and chief[3:3 + len(TINY)] == TINY
    oracle = chief[chief.index("--oracle") + 1]
    assert oracle.startswith("127.0.0.1:")
    assert chief[-6:] == ["--tuner-id", "chief", "--oracle", oracle, "--workers", "2"]
    assert [w[-4:] for w in workers] == [["--tuner-id", f"tuner{i}", "--oracle", oracle] for i in range(2)]
    for flag in ("--tuner-id", "--oracle=h:1", "--workers"):
        with pytest.raises(UserError, match=f"launch sets the chief and the workers itself: drop {flag.split('=')[0]}"):
            parallel.launch_commands([*TINY, flag, "x"], 2)


def test_bad_distributed_options_are_one_line_errors(data_root, tmp_path, capsys):
    base = [*TINY, "--data-dir", str(data_root), "--tuning-dir", str(tmp_path)]
    assert cli.main([*base, "--tuner-id", "tuner0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: tuner id 'tuner0' (--tuner-id or KERASTUNER_TUNER_ID) needs --oracle HOST:PORT, the chief's address "
        "(or KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT)"]
    assert cli.main([*base, "--budget", "recipe", "--tuner-id", "chief", "--oracle", "127.0.0.1:1"]) == 2
    assert "--budget recipe times the recipe on each machine" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_worker_without_a_chief_and_a_chief_without_its_port_stop_with_one_line(data_root, tmp_path, capsys):
    port = free_port()
    base = [*TINY, "--max-trials", "2", "--data-dir", str(data_root), "--tuning-dir", str(tmp_path)]
    started = time.monotonic()
    code = cli.main([*base, "--tuner-id", "tuner0", "--oracle", f"127.0.0.1:{port}", "--oracle-timeout", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.monotonic() - started < 60
    assert err[-1] == (f"error: tuner0: no chief answered at 127.0.0.1:{port} within 2 s: start it (tune ... "
                       f"--tuner-id chief --oracle 127.0.0.1:{port}) or correct --oracle (a finished search needs no "
                       "workers)")
    assert not list((tmp_path / "mlp").glob("*.json"))  # a worker writes no summary
    with socket.create_server(("127.0.0.1", port)):  # another program holds the port
        assert cli.main([*base, "--tuner-id", "chief", "--oracle", f"127.0.0.1:{port}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: chief: cannot listen on 127.0.0.1:{port} (port in use, or not an address of this machine): choose "
        "another --oracle port")
    assert not (tmp_path / "mlp" / "best_hparams.json").exists()


@pytest.mark.slow
def test_a_chief_and_two_workers_run_every_trial_once_and_the_chief_alone_writes_the_summaries(data_root, tmp_path):
    """Three processes as on three machines: the chief and two workers, each in its own tuning folder. Then `launch
    --workers 1` continues the search in the chief's folder (one machine, one folder) with one more trial."""
    oracle, names = f"127.0.0.1:{free_port()}", ["chief", "tuner0", "tuner1"]
    processes = [subprocess.Popen([sys.executable, "-m", "cifar_keras", *TINY, "--max-trials", "2", "--data-dir",
                                   str(data_root), "--tuning-dir", str(tmp_path / name), "--tuner-id", name, "--oracle",
                                   oracle, "--oracle-timeout", "60", *(["--workers", "2"] if name == "chief" else [])],
                                  env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in names]
    results = finish(processes, names)

    # Each worker ran the trials the chief gave it, and kept only KerasTuner's working files (their checkpoints).
    ran = {}
    for name, (_, out, _) in zip(names[1:], results[1:]):
        [line] = [line for line in out.splitlines() if line.startswith(f"{name}: ran trial(s) ")]
        listed = line.split("ran trial(s) ", 1)[1].split(";")[0]
        ran[name] = [] if listed == "none" else listed.split(", ")
        folder = tmp_path / name / "mlp"
        assert [p.name for p in folder.iterdir()] == ["search"]
        assert sorted(p.name for p in (folder / "search").glob("trial_*")) == [f"trial_{i}" for i in sorted(ran[name])]
        assert all((folder / "search" / f"trial_{i}" / "checkpoint.weights.h5").is_file() for i in ran[name])
    # Every trial ran exactly once, in one worker or the other.
    assert sorted(ran["tuner0"] + ran["tuner1"]) == ["0", "1"]

    # The chief trained nothing and wrote the summaries, once.
    chief_out = results[0][1]
    assert chief_out.count("2 trials; best validation accuracy") == 1
    folder = tmp_path / "chief" / "mlp"
    assert sorted(p.name for p in folder.iterdir()) == ["best_hparams.json", "search", "search.json", "trials.json"]
    assert not list((folder / "search").glob("trial_*/checkpoint*"))
    trials = json.loads((folder / "trials.json").read_text())
    assert [t["trial_id"] for t in trials] == ["0", "1"] and {t["status"] for t in trials} == {"COMPLETED"}
    best = json.loads((folder / "best_hparams.json").read_text())
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in trials)
    record = json.loads((folder / "search.json").read_text())
    assert record["trials"] == 2 and record["distributed"] == {"oracle": oracle, "workers": 2, "trials_given": ran}

    # launch: the chief and a worker in the chief's folder. The worker runs the new trial, only it (no finished
    # trial again), and is told the search is over; the chief, waiting for it, finishes.
    launched = subprocess.Popen([sys.executable, "-m", "cifar_keras", "launch", "--workers", "1", "--", *TINY,
                                 "--max-trials", "3", "--data-dir", str(data_root), "--tuning-dir",
                                 str(tmp_path / "chief")],
                                env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    [(_, out, _)] = finish([launched], ["launch"])
    assert out.count("3 trials; best validation accuracy") == 1  # the chief's output
    trials = json.loads((folder / "trials.json").read_text())
    assert [t["trial_id"] for t in trials] == ["0", "1", "2"]
    assert {t["status"] for t in trials} == {"COMPLETED"}
    given = json.loads((folder / "search.json").read_text())["distributed"]["trials_given"]
    assert given == {"tuner0": ["2"]}
    assert list((folder / "search").glob("trial_*/checkpoint.weights.h5")) == [
        folder / "search" / "trial_2" / "checkpoint.weights.h5"]
