"""The one run-record writer: JSON files that every reported number comes from."""

import csv
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from cifar_keras.errors import UserError


def code_version():
    """The git commit of this package's code, and whether the working tree had changes (None outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def write(path, record):
    """Write a run record (a dict gets a timestamp; a list, e.g. of trials, is written as it is) as indented
    JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(record, dict):
        record = {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def read_log(path):
    """The per-epoch rows of a fit's CSV log (Keras' CSVLogger), as floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: run record not found") from None
    except OSError as e:  # a folder, no permission, ...
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
