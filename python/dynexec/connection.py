"""The connection file: where a cluster's head listens, and the secret that lets a process in.

It is JSON, created with owner-only permissions; whoever can read it can run code on the cluster.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

from . import _core

FIELDS = ("endpoint", "server_public_key", "client_public_key", "client_secret_key")


def new_keys() -> dict:
    """A fresh head key pair and cluster secret (the client key pair)."""
    server_public, server_secret = _core.curve_keypair()
    client_public, client_secret = _core.curve_keypair()
    return {"server_public_key": server_public, "server_secret_key": server_secret,
            "client_public_key": client_public, "client_secret_key": client_secret}


def write(path, endpoint: str, keys: dict, **extra) -> Path:
    """Writes the connection file atomically, readable by its owner only."""
    path = Path(path)
    info = {"endpoint": endpoint, **{k: keys[k] for k in FIELDS[1:]}, "host": socket.gethostname(),
            "pid": os.getpid(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dynexec-")  # mkstemp creates it 0600
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)
    return path


def read(path) -> dict:
    """Reads a connection file; a clear error says what is wrong with it."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no dynexec connection file at {path} (is the cluster started, and is the path "
                                f"the one given to --connection-file?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a dynexec connection file: {e}") from None
    missing = [k for k in FIELDS if k not in info]
    if missing:
        raise ValueError(f"{path} is not a dynexec connection file: it lacks {', '.join(missing)}")
    return info
