"""HOST:PORT addresses: a cluster's coordinator (fit --coordinator), a search's chief (tune --oracle)."""

import ipaddress
import socket

from cifar_keras.errors import UserError


def parse(text, name, meaning):
    """(HOST, PORT) of `text`, HOST as written (an IPv6 address keeps its brackets: [::1]:8000). A one-line
    UserError otherwise, naming the address (`name`, e.g. "coordinator") and saying what it is (`meaning`)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{name} {text!r}: expected HOST:PORT ({meaning})")
    return host, int(port)


def unbracketed(host):
    """HOST as sockets take it: an IPv6 address without its brackets."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host):
    """Whether HOST is this machine's loopback (localhost, 127.x.x.x, ::1): a cluster of one machine."""
    host = unbracketed(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_address(host, port):
    """Where a server for HOST:PORT listens, as gRPC and JAX take it: HOST:PORT itself for a loopback HOST (nothing
    outside this machine reaches it), else PORT on every interface (HOST is the address the others reach, which may
    not be one this machine can bind, e.g. behind NAT)."""
    return f"{host}:{port}" if is_loopback(host) else f"[::]:{port}"


def free_port(host="127.0.0.1"):
    """A port of HOST that nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
