"""The check that the processes form one cluster, before JAX's distributed runtime starts.

JAX reports a wrong coordinator, a mismatched process count or a repeated process id only by
aborting the process with a C++ fatal error after its timeout; here each gives one line.
"""

import contextlib
import json
import socket
import time

from cifar_keras.errors import UserError


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
        return _coordinate(cluster, deadline)
    while True:
        try:
            conn = socket.create_connection(cluster.host_port,
                                            timeout=max(0.1, min(5.0, deadline - time.monotonic())))
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


def listen(cluster):
    """Process 0's listening socket on the coordinator's port: on the coordinator's own address when it is a
    loopback one (nothing outside this machine can join), else on every interface (the coordinator's HOST is
    the address the others reach, which may not be one this machine can bind, e.g. behind NAT)."""
    host, port = cluster.host_port
    if cluster.loopback:
        return socket.create_server((host, port))
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", port))


def _coordinate(cluster, deadline):
    _, port = cluster.host_port
    try:
        listener = listen(cluster)
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
                conn, _ = listener.accept()
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
