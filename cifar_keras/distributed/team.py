"""The processes training together (a Team): what process 0 shares with the others, and leaving the cluster.

Process 0 alone writes in the output folder; it shares its run folder with the others at the start, so
that every process resumes from the same checkpoint (the others keep theirs in a private scratch folder).
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from cifar_keras.errors import UserError


class Team:
    """The processes training together. A single process is a team of one (nothing to share, nothing to leave)."""

    current = None  # the Team of this process while it is in a cluster (set by multiworker.join_cluster)

    def __init__(self, process_id=0, processes=1, scratch=None, cluster=None):
        self.process_id, self.processes, self.scratch, self.cluster = process_id, processes, scratch, cluster
        self.fingerprint = ""  # of the run every process trains (check_same_run)

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

    def gather(self, data):
        """Every process's `data` (bytes of the same length on every process), in process order."""
        import numpy as np
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.frombuffer(data, np.uint8))
        return [row.tobytes() for row in np.asarray(gathered).reshape(self.processes, -1)]

    def share(self, make):
        """Runs make() -> (value, files) on process 0 (value: JSON, files: {name: bytes}); every process gets
        (value, files). When make() fails, process 0 raises its error and the others a one-line UserError that
        names it (they would otherwise wait in the broadcast for ever)."""
        if self.processes == 1:
            return make()
        if self.primary:
            try:
                value, files = make()
            except BaseException as e:
                self.broadcast(pack({"error": _one_line(e), "user_error": isinstance(e, UserError)}, {}))
                raise
            self.broadcast(pack({"value": value}, files))
            return value, files
        header, files = unpack(self.broadcast())
        if "error" in header:
            if header.get("user_error"):
                raise UserError(f"process 0: {header['error']}")
            raise UserError(f"process 0 failed ({header['error']}); see its output")
        return header["value"], files

    def make_scratch(self, run):
        """A private, empty scratch folder of this process (not process 0) for the run named `run` (a string naming
        its output folder and name) with the config the processes agreed on (check_same_run): the same one when the
        run is resumed, so that it replaces what a process that crashed left there."""
        key = hashlib.sha256(f"{run}/{self.fingerprint}".encode()).hexdigest()[:16]
        self.scratch = Path(tempfile.gettempdir()) / f"cifar_keras-{key}-process{self.process_id}"
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        return self.scratch

    def check_same_run(self, fingerprint):
        """A UserError on every process unless all train the same run (the same RunConfig, whose `fingerprint` the
        team keeps)."""
        self.fingerprint = fingerprint
        if self.processes == 1:
            return
        rows = self.gather(fingerprint.encode())
        others = [i for i, row in enumerate(rows) if row != rows[0]]
        if others:
            raise UserError(f"process {', '.join(map(str, others))} of {self.processes} would train another run than "
                            "process 0 (options, recipe or tuned hyperparameters differ): give every process the same "
                            "fit command and files")

    def leave(self):
        """Leave the cluster once training is done (a barrier: JAX's shutdown); True on process 0, which goes on
        alone, False on the others, whose scratch folder is removed."""
        if self.cluster is not None:
            import jax

            jax.distributed.shutdown()
            Team.current = None
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.primary


def _one_line(error):
    """`error`'s first line, after its type unless it is a UserError: 'JSONDecodeError: Expecting value ...'."""
    lines = str(error).strip().splitlines()
    if isinstance(error, UserError):
        return lines[0] if lines else ""
    return f"{type(error).__name__}: {lines[0]}"[:300] if lines else type(error).__name__


def pack(header, files):
    """One bytes of a JSON `header` and `files` ({name: bytes}), for a broadcast."""
    header = {**header, "files": {name: len(data) for name, data in files.items()}}
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(files.values())


def unpack(data):
    """(header, files) of pack's bytes."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    files, offset = {}, 8 + size
    for name, length in header.pop("files").items():
        files[name] = data[offset:offset + length]
        offset += length
    return header, files
