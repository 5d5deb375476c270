"""fit --distribute multiworker: real processes on 127.0.0.1 (JAX's distributed runtime, CPU collectives over Gloo),
the cluster checks, and `launch`."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from cifar_keras import cli
from cifar_keras.distributed import address, processes, slurm
from cifar_keras.distributed.cluster import Cluster, resolve_cluster
from cifar_keras.distributed.rendezvous import rendezvous
from cifar_keras.distributed.team import Team
from cifar_keras.config import make_config
from cifar_keras.errors import UserError

pytest.importorskip("jax")

MODEL_ARGS = {"hidden": [16]}
FIT = ["fit", "mlp", "--hparams", "none", "--epochs", "2", "--batch-size", "25", "--val-size", "100",
       "--precision", "float32", "--model-args", json.dumps(MODEL_ARGS), "--cluster-timeout", "30"]

# Test instrumentation, loaded by every launched process (sitecustomize on PYTHONPATH): what each process feeds,
# the weights it ends training with, and, on demand, process 1 dying after an epoch.
HOOKS = textwrap.dedent("""
    import os
    if os.environ.get("TEST_HOOKS") and "KERAS_DISTRIBUTION_PROCESS_ID" in os.environ:
        import hashlib, json, time
        from pathlib import Path
        import keras, numpy as np
        from keras.src.distribution import distribution_lib

        out, pid = Path(os.environ["TEST_HOOKS"]), os.environ["KERAS_DISTRIBUTION_PROCESS_ID"]
        shard = distribution_lib.Distribution.distribute_dataset

        def distribute_dataset(self, dataset):
            sharded = shard(self, dataset)
            if len(dataset.element_spec) == 2:  # the training batches (validation's carry weights)
                shares = [[hashlib.sha1(image.tobytes()).hexdigest() for image in x.numpy()] for x, _ in sharded]
                (out / f"shares-{pid}.json").write_text(json.dumps(shares))
            return sharded

        distribution_lib.Distribution.distribute_dataset = distribute_dataset

        class Die(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == int(os.environ["TEST_DIE_AFTER_EPOCH"]):
                    (out / "died").write_text(str(time.time()))
                    os._exit(3)

        fit = keras.Model.fit

        def fit_and_record(self, *args, **kwargs):
            if pid == "1" and os.environ.get("TEST_DIE_AFTER_EPOCH"):
                kwargs["callbacks"] = [*kwargs["callbacks"], Die()]
            history = fit(self, *args, **kwargs)
            np.savez(out / f"weights-{pid}.npz", *self.get_weights())
            return history

        keras.Model.fit = fit_and_record
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the cluster's settings ----------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID", "JAX_COORDINATOR_PORT", *slurm.VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cluster_from_flags_then_keras_variables_then_slurm(clean_env):
    clean_env.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:1234,10.0.0.3:1234")
    clean_env.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "2")
    cluster = resolve_cluster()  # Keras' own convention: the first address is the coordinator
    assert (cluster.coordinator, cluster.num_processes, cluster.process_id) == ("10.0.0.1:1234", 3, 2)
    cluster = resolve_cluster(process_id=1)  # a flag wins over the variable
    assert (cluster.process_id, cluster.num_processes) == (1, 3)
    with pytest.raises(UserError, match="lists 3 processes, but the cluster has 2"):
        resolve_cluster(num_processes=2)

    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
        clean_env.delenv(name)
    with pytest.raises(UserError, match="cluster: --coordinator HOST:PORT, --num-processes N, --process-id I"):
        resolve_cluster()
    # A Slurm job step, as JAX reads it: the first node, a port from the job id.
    for name, value in (("SLURM_JOB_ID", "4100"), ("SLURM_STEP_NODELIST", "node[007-009],gpu1"), ("SLURM_NTASKS", "4"),
                        ("SLURM_PROCID", "3"), ("SLURM_LOCALID", "0")):
        clean_env.setenv(name, value)
    cluster = resolve_cluster()
    assert cluster.coordinator == f"node007:{4100 % 4096 + 61440}" and cluster.num_processes == 4
    assert cluster.process_id == 3 and cluster.source == "Slurm"
    assert resolve_cluster(coordinator="h:5").coordinator == "h:5"

    with pytest.raises(UserError, match="expected HOST:PORT"):
        resolve_cluster("nohost", 2, 0)
    with pytest.raises(UserError, match=r"process id 2 is outside 0\.\.1"):
        resolve_cluster("h:1", 2, 2)


def test_slurm_node_lists_and_job_ports_as_jax_reads_them(clean_env):
    # The first host of every form of SLURM_STEP_NODELIST.
    for node_list in ("node001", "node001,gpu1", "node[001-015],gpu1", "node[001,007-015],gpu1", "node[001]"):
        assert slurm.first_node(node_list) == "node001"
    assert slurm.first_node("a1,b[2-3]") == "a1"
    for name, value in (("SLURM_JOB_ID", "7"), ("SLURM_STEP_NODELIST", "gpu[12-13]"), ("SLURM_NTASKS", "2"),
                        ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "1")):
        clean_env.setenv(name, value)
    assert slurm.slurm_cluster() == ("gpu12:61447", 2, 1)  # 61440 + 7 % 4096
    clean_env.setenv("JAX_COORDINATOR_PORT", "5000")
    assert slurm.slurm_cluster() == ("gpu12:5000", 2, 1)
    clean_env.setenv("SLURM_NTASKS", "two")
    with pytest.raises(UserError, match="SLURM_NTASKS must be an integer, got 'two'"):
        resolve_cluster()
    clean_env.delenv("SLURM_LOCALID")
    assert slurm.slurm_cluster() is None  # not a Slurm job step


def test_host_port_addresses():
    assert address.parse("10.0.0.1:8000", "oracle", "x") == ("10.0.0.1", 8000)
    assert address.parse("[::1]:8000", "oracle", "x") == ("[::1]", 8000)  # gRPC and JAX take the brackets
    for text in ("h", "h:", ":80", "h:0", "h:65536", "h:8o"):
        with pytest.raises(UserError, match=rf"^coordinator '{re.escape(text)}': expected HOST:PORT \(its meaning\)$"):
            address.parse(text, "coordinator", "its meaning")
    assert [address.is_loopback(h) for h in ("localhost", "127.0.0.1", "127.1.2.3", "[::1]", "::1")] == [True] * 5
    assert [address.is_loopback(h) for h in ("10.0.0.1", "node007", "[::]", "0.0.0.0")] == [False] * 4
    assert address.listen_address("127.0.0.1", 80) == "127.0.0.1:80"
    assert address.listen_address("[::1]", 80) == "[::1]:80"
    assert address.listen_address("node007", 80) == "[::]:80"
    assert Cluster("[::1]:9000", 2, 0).host_port == ("::1", 9000) and Cluster("[::1]:9000", 2, 0).loopback


def test_an_error_of_process_0_while_it_prepares_stops_the_others_with_one_line():
    """Team.share: when process 0's make() fails, whatever the error, the others end with one line instead of
    waiting for process 0's files in the broadcast."""
    sent = []

    class Wire(Team):  # a broadcast through a list: what process 0 sends, the others receive
        def broadcast(self, data=None):
            if self.primary:
                sent.append(data)
                return data
            assert sent, "process 0 sent nothing: the others would wait in the broadcast for ever"
            return sent.pop(0)

    def not_on_this_process():
        raise AssertionError("only process 0 runs make()")

    def corrupt():  # what reading a corrupt .work/NAME/config.json raises
        return json.loads("{broken")

    with pytest.raises(json.JSONDecodeError):
        Wire(0, 2).share(corrupt)
    with pytest.raises(UserError) as error:
        Wire(1, 2).share(not_on_this_process)
    assert str(error.value) == ("process 0 failed (JSONDecodeError: Expecting property name enclosed in double quotes: "
                                "line 1 column 2 (char 1)); see its output")

    def refused():
        raise UserError("an interrupted run of 'mlp' with another config is there")

    with pytest.raises(UserError):
        Wire(0, 2).share(refused)
    with pytest.raises(UserError, match=r"^process 0: an interrupted run of 'mlp' with another config is there$"):
        Wire(1, 2).share(not_on_this_process)

    assert Wire(0, 2).share(lambda: ([1, 5], {"a": b"xy", "log": b""})) == ([1, 5], {"a": b"xy", "log": b""})
    assert Wire(1, 2).share(not_on_this_process) == ([1, 5], {"a": b"xy", "log": b""})
    assert not sent


def rendezvous_all(specs, timeout=20.0, busy=False, port=None):
    """Run rendezvous for each (num_processes, process_id) in threads; their errors (None: joined)."""
    port = port or free_port()
    blocker = socket.create_server(("", port)) if busy else None
    errors = [None] * len(specs)

    def run(i, n, pid):
        try:
            rendezvous(Cluster(f"127.0.0.1:{port}", n, pid, timeout))
        except UserError as e:
            errors[i] = str(e)

    threads = [threading.Thread(target=run, args=(i, *spec)) for i, spec in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if blocker:
        blocker.close()
    return errors


def test_rendezvous_gives_one_line_errors_for_a_wrong_cluster():
    assert rendezvous_all([(3, 0), (3, 1), (3, 2)]) == [None, None, None]
    # A mismatched process count: every process says so.
    errors = rendezvous_all([(2, 0), (3, 1)])
    assert all("process 1 was started with 3 processes, process 0 with 2" in e for e in errors)
    # A repeated process id.
    errors = rendezvous_all([(3, 0), (3, 1), (3, 1)])
    assert "two processes were started with process id 1" in errors[0] and errors.count(errors[0]) >= 2
    # A wrong coordinator (nobody listens there), a missing process, a port already taken.
    start = time.monotonic()
    [error] = rendezvous_all([(2, 1)], timeout=1.5)
    assert error.startswith("process 1: nothing answered at 127.0.0.1:") and "start process 0" in error
    assert time.monotonic() - start < 10
    [error] = rendezvous_all([(3, 0)], timeout=1.0)
    assert error.startswith("only 1 of 3 processes joined within 1 s (missing: process 1, 2)")
    [error] = rendezvous_all([(2, 0)], busy=True)
    assert error.startswith("process 0 cannot listen on port") and "repeated --process-id 0" in error


def port_taken(host, port):
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="all of 127.0.0.0/8 is this machine's on Linux")
def test_process_0_listens_on_loopback_alone_for_a_loopback_coordinator():
    port = free_port()
    errors = []
    waiting = threading.Thread(target=lambda: errors.extend(rendezvous_all([(2, 0)], timeout=2.0, port=port)))
    waiting.start()
    deadline = time.monotonic() + 10
    while not port_taken("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_taken("127.0.0.1", port)  # process 0 listens, waiting for process 1
    assert not port_taken("127.0.0.2", port)  # on 127.0.0.1 alone: not on every interface
    waiting.join(30)
    assert errors == ["only 1 of 2 processes joined within 2 s (missing: process 1): start them with --coordinator "
                      f"127.0.0.1:{port} --num-processes 2 (or raise --cluster-timeout)"]


def test_multiworker_on_tensorflow_says_to_use_jax(data_root, tmp_path, capsys):
    import keras

    assert keras.backend.backend() == "tensorflow"  # the test suite's backend
    code = cli.main([*FIT, "--data-dir", str(data_root), "--output-dir", str(tmp_path), "--distribute", "multiworker"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "KERAS_BACKEND=jax" in err[0] and "keras-team/keras#20585" in err[0]
    code = cli.main([*FIT, "--data-dir", str(data_root), "--output-dir", str(tmp_path), "--coordinator", "h:1"])
    assert code == 2 and capsys.readouterr().err.strip() == "error: --coordinator needs --distribute multiworker"
    assert not list(tmp_path.iterdir())


def test_launch_command_and_its_errors():
    command = processes.launch_command(["fit", "mlp", "--epochs", "1"])
    assert command[1:] == ["-m", "cifar_keras", "fit", "mlp", "--epochs", "1", "--distribute", "multiworker"]
    for arguments, message in ((["evaluate", "x.keras"], "launch runs a fit command"),
                               (["fit", "mlp", "--distribute", "mirrored"], "not --distribute mirrored"),
                               (["fit", "mlp", "--process-id", "1"], "drop --process-id")):
        with pytest.raises(UserError, match=message):
            processes.launch_command(arguments)


def test_padded_validation_batches_score_the_whole_split(data_root):
    """The static-size padded batches a cluster validates on give the loss and metrics of the split itself."""
    import keras

    from cifar_keras import data
    from cifar_keras import models
    from cifar_keras.training.optimizers import compile_model
    from cifar_keras.data.pipeline import make_dataset, padded_dataset

    split = data.train_val_split(data.load(data_root).train, 100, seed=0)[1].take(np.arange(93))
    config = make_config("mlp", model_args=MODEL_ARGS)
    model = models.get_spec("mlp").build(**MODEL_ARGS)
    compile_model(model, config, steps_per_epoch=1)
    plain = model.evaluate(make_dataset(split, 500), verbose=0, return_dict=True)
    padded = model.evaluate(padded_dataset(split, 40), verbose=0, return_dict=True)  # 3 batches, 27 blanks
    assert padded == pytest.approx(plain, rel=1e-5)
    assert keras.backend.backend() == "tensorflow"


# --- launch ----------------------------------------------------------------------------------------

def test_launch_stops_the_others_when_one_fails_and_exits_with_its_code(capfd, tmp_path):
    script = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        i, ready = os.environ["KERAS_DISTRIBUTION_PROCESS_ID"], Path(os.environ["READY"])
        print("process", i, os.environ["KERAS_DISTRIBUTION_JOB_ADDRESSES"],
              os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"], os.environ["KERAS_BACKEND"], flush=True)
        if i == "0":
            ready.touch()
        if i == "2":
            for _ in range(300):  # fails once process 0 has printed
                if ready.exists():
                    break
                time.sleep(0.1)
            print("process 2 fails", flush=True)
            sys.exit(7)
        time.sleep(60)
    """)
    start = time.monotonic()
    code = processes.run_processes([sys.executable, "-c", script], 3,
                                     env={**os.environ, "KERAS_BACKEND": "jax", "READY": str(tmp_path / "ready")},
                                     grace=5)
    took = time.monotonic() - start
    out, err = capfd.readouterr()
    assert code == 7 and took < 40  # the two sleepers were stopped
    assert "process 0 127.0.0.1:" in out and " 3 jax" in out  # process 0's output is shown, the others' is not
    assert "process 1" not in out and "[2] process 2 fails" in err and "process 2 of 3 failed (exit code 7)" in err
    assert processes.run_processes([sys.executable, "-c", "pass"], 2) == 0


# --- real processes ----------------------------------------------------------------------------

def child_env(tmp_path, hooks_out=None, **extra):
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOKS)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TMPDIR": str(tmp_path / "tmp"),
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]), **extra}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    if hooks_out:
        env["TEST_HOOKS"] = str(hooks_out)
    return env


def test_processes_of_different_runs_stop_together_with_one_line():
    """check_same_run: every process compares the fingerprints of all (JAX's allgather, here the rows it returns)."""
    class Gathered(Team):
        def gather(self, data):
            return rows

    rows = [b"run-a", b"run-a", b"run-b", b"run-b"]
    for i in range(4):
        with pytest.raises(UserError, match=r"^process 2, 3 of 4 would train another run than process 0 \(options, "
                                            r"recipe or tuned hyperparameters differ\): give every process the same "
                                            r"fit command and files$"):
            Gathered(i, 4).check_same_run(("run-a", "run-a", "run-b", "run-b")[i])
    rows = [b"run-a"] * 4
    team = Gathered(3, 4)
    team.check_same_run("run-a")
    assert team.fingerprint == "run-a"  # it names the scratch folder's run


@pytest.mark.slow
def test_a_failure_of_process_0_before_training_stops_the_other_with_one_line(tmp_path, data_root):
    """Two processes form the cluster (the flags' way); process 0 then fails as it reads its run folder (a corrupt
    .work/mlp/config.json of an interrupted run), and the other process, which waits for process 0's files, stops
    with one line that names process 0's error, instead of waiting for ever. Nothing is written."""
    work = tmp_path / "out" / ".work" / "mlp"
    (work / "backup").mkdir(parents=True)
    (work / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1}))
    (work / "config.json").write_text("{broken")
    port = free_port()
    started = [subprocess.Popen([sys.executable, "-m", "cifar_keras", *FIT, "--data-dir", str(data_root),
                                 "--output-dir", str(tmp_path / "out"), "--distribute", "multiworker", "--coordinator",
                                 f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                                env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    (out0, err0), (out1, err1) = [p.communicate(timeout=300) for p in started]
    for out in (out0, out1):
        assert "joined the cluster of coordinator" in out and "(from flags)" in out
    last0, last1 = err0.strip().splitlines()[-1], err1.strip().splitlines()[-1]
    assert started[1].returncode == 2, err1[-2000:]
    if started[0].returncode == 1:  # an unexpected error (a traceback's last line) ...
        error, message = last0.split(": ", 1)
        assert last1 == f"error: process 0 failed ({error.rsplit('.', 1)[-1]}: {message}); see its output"
        assert error == "json.decoder.JSONDecodeError"
    else:  # ... or one line (should reading the corrupt file become a UserError)
        assert started[0].returncode == 2 and last1 == f"error: process 0: {last0.removeprefix('error: ')}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".work"]


def sha1s(images):
    return [hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest() for image in images]


@pytest.mark.slow
def test_two_processes_train_as_one_resume_and_write_one_record(tmp_path, data_root):
    """Two processes (Keras' variables, no launcher): process 1 dies after epoch 1, process 0 stops with one line.
    The same command through `launch` resumes from epoch 1 and finishes: both processes end with the same weights,
    each fed its own half of every global batch, and process 0 alone wrote one record whose metrics are the
    whole validation split's."""
    import keras

    from cifar_keras import records
    from cifar_keras import models
    from cifar_keras.training.inputs import build_inputs, training_data
    from cifar_keras.training.optimizers import compile_model
    from cifar_keras.data.pipeline import make_dataset

    out, hooks = tmp_path / "out", tmp_path / "hooks_out"
    hooks.mkdir()
    argv = [*FIT, "--data-dir", str(data_root), "--output-dir", str(out), "--distribute", "multiworker"]
    cluster = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    env = child_env(tmp_path, hooks, TEST_DIE_AFTER_EPOCH="1", **cluster)
    started = [subprocess.Popen([sys.executable, "-m", "cifar_keras", *argv],
                                env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    (out0, err0), (out1, err1) = [p.communicate(timeout=300) for p in started]
    stopped = time.time()
    assert started[1].returncode == 3, err1[-2000:]
    assert started[0].returncode == 1, err0[-2000:]
    last = err0.strip().splitlines()[-1]
    assert last.startswith("error: process 0 of 2: another process of the cluster stopped (") and "resume" in last
    lag = stopped - float((hooks / "died").read_text())
    assert lag < 30  # measured: about 1 s (Gloo sees the connection close at once)
    assert json.loads((out / ".work" / "mlp" / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert not (out / "mlp.json").exists() and len(list((tmp_path / "tmp").glob("cifar_keras-*-process1"))) == 1

    done = subprocess.run([sys.executable, "-m", "cifar_keras", "launch", "--processes", "2", "--", *argv[:-2]],
                          env=child_env(tmp_path, hooks), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 replica(s) in 2 processes" in done.stdout and "resuming after epoch 1" in done.stdout

    # One record, by process 0; the other process wrote nothing there, and left no scratch folder.
    assert sorted(p.name for p in out.iterdir()) == [".work", "mlp.json", "mlp.keras", "mlp.log.csv"]
    # (The rerun replaced the scratch folder that process 1 left when it died, then removed it.)
    assert not list((out / ".work").iterdir()) and not list((tmp_path / "tmp").glob("cifar_keras-*"))
    record = records.read(out / "mlp.json")
    assert record["processes"] == 2 and record["replicas"] == 2 and record["global_batch_size"] == 50
    assert record["scaled_learning_rate"] == pytest.approx(2 * make_config("mlp").learning_rate)
    assert record["resumed"] and record["epochs"] == 2 and record["config"]["distribute"] == "multiworker"

    # The same weights in both processes.
    weights = [np.load(hooks / f"weights-{i}.npz") for i in range(2)]
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0].files)

    # Each process fed its own half of every global batch of the resumed epoch.
    config = make_config("mlp", epochs=2, batch_size=25, val_size=100, model_args=MODEL_ARGS)
    _, train_split, val_split = build_inputs(config, data_root)
    expected = [sha1s(x.numpy()) for x, _ in training_data(train_split, config, 50, first_epoch=1)]
    shares = [json.loads((hooks / f"shares-{i}.json").read_text()) for i in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(expected) == 10
    for step, batch in enumerate(expected):
        assert len(shares[0][step]) == len(shares[1][step]) == 25
        assert not set(shares[0][step]) & set(shares[1][step])
        assert sorted(shares[0][step] + shares[1][step]) == sorted(batch)

    # The validation metrics the cluster logged are those of the whole split, evaluated by one process.
    model = models.get_spec("mlp").build(**MODEL_ARGS)
    model.set_weights([weights[0][f"arr_{i}"] for i in range(len(weights[0].files))])
    compile_model(model, config, steps_per_epoch=1)
    single = model.evaluate(make_dataset(val_split, 500), verbose=0, return_dict=True)
    logged = records.read_log(out / "mlp.log.csv")[-1]
    assert logged["val_accuracy"] == pytest.approx(single["accuracy"], abs=1e-6)
    assert logged["val_top5"] == pytest.approx(single["top5"], abs=1e-6)
    assert logged["val_loss"] == pytest.approx(single["loss"], rel=1e-4)
    # and the saved model (the best epoch's weights) scores on its own what the record says.
    from cifar_keras.data.cifar100 import load
    from cifar_keras.evaluation.metrics import evaluate_model

    saved = evaluate_model(keras.saving.load_model(out / "mlp.keras"), val_split, load(data_root).fine_to_coarse())
    assert record["val"]["top1"] == record["val"]["top1_float32"] == round(saved["top1"], 2)


def test_supervise_pins_each_process_to_its_cores_before_it_starts(tmp_path):
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        pytest.skip("needs 2 cores")
    shares = processes.core_shares(2, 1)
    assert shares == [available[:1], available[1:2]]
    script = "import os, sys; open(sys.argv[1], 'w').write(repr(sorted(os.sched_getaffinity(0))))"
    commands = [[sys.executable, "-c", script, str(tmp_path / f"cores{i}")] for i in range(2)]
    assert processes.supervise(commands, cores=shares) == 0
    assert [eval((tmp_path / f"cores{i}").read_text()) for i in range(2)] == shares
    with pytest.raises(UserError, match=f"need {2 * (len(available) + 1)} cores; this machine gives"):
        processes.core_shares(2, len(available) + 1)


def test_launch_pins_only_fit_processes(capsys):
    assert cli.main(["launch", "--workers", "1", "--cores-per-process", "1", "--", "tune", "mlp"]) == 2
    assert "--cores-per-process is for fit" in capsys.readouterr().err
