"""Connection files: where a cluster's head listens, and the credentials that let a process in.

Two kinds, one per role, so that a client cannot pose as a compute server (whose results other clients
unpickle) nor a compute server submit jobs:

- the client connection file (``"role": "client"``, ``dynexec.cluster --connection-file FILE``), for
  ``Executor(connect=FILE)``: the head's public key and the clients' key pair, the session, the archive;
- the server join file (``"role": "server"``, ``dynexec.cluster --server-file``, by default FILE with the
  suffix ``.server.json``), for ``python -m dynexec.server --join``: the head's public key and the compute
  servers' key pair.

Both are JSON, created owner-only; whoever can read one can act in its role on the cluster.
"""
from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import stat
import struct
import tempfile
import threading
import time
import warnings
from pathlib import Path

from . import _core

ROLES = {"client": ("client_public_key", "client_secret_key"),
         "server": ("compute_public_key", "compute_secret_key")}
COMMON = ("endpoint", "server_public_key")  # server_public_key: the head's own (CURVE server) key
SCHEMES = ("tcp", "ipc")
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}
# Optional fields and the types they may have (a file with other fields is fine: later versions add some).
_OPTIONAL = {"session": (str,), "archive": (str, type(None)), "policy": (str,), "host": (str,),
             "pid": (int,), "lease_seconds": (int, float), "mpi_size": (int,)}


class ConnectionFileError(ValueError):
    """A connection file that cannot be used; the message names the file and the field, never a secret."""


def new_keys() -> dict:
    """A fresh head key pair, the clients' key pair and the compute servers' key pair."""
    keys = {}
    for prefix in ("server", "client", "compute"):
        keys[f"{prefix}_public_key"], keys[f"{prefix}_secret_key"] = _core.curve_keypair()
    return keys


def listen_keys(keys: dict) -> dict:
    """What the head's Engine(listen=...) takes from new_keys(): its own pair and the two public keys."""
    return {k: keys[k] for k in ("server_public_key", "server_secret_key", "client_public_key",
                                 "compute_public_key")}


def credentials(keys: dict, role: str) -> dict:
    """The head's public key and `role`'s key pair: what one connection file of that role holds."""
    return {"role": role, "server_public_key": keys["server_public_key"], **{k: keys[k] for k in ROLES[role]}}


def server_file_for(path) -> Path:
    """The default server join file next to a client connection file: cluster.json -> cluster.server.json."""
    path = Path(path)
    return path.with_name(f"{path.stem}.server{path.suffix or '.json'}")


def write(path, endpoint: str | list[str], keys: dict, role: str, **extra) -> Path:
    """Writes a connection file for `role` ("client" or "server") atomically, readable by its owner only.
    `keys` is new_keys() or credentials() of that role; only that role's pair goes into the file.
    `endpoint` may be a list of candidates (field "endpoints"); "endpoint" is then the first, for older readers."""
    path = Path(path)
    candidates = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    info = {"endpoint": candidates[0], **({"endpoints": candidates} if len(candidates) > 1 else {}),
            **credentials(keys, role), "host": socket.gethostname(), "pid": os.getpid(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dynexec-")  # mkstemp creates it 0600
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)
    return path


def _type_name(v) -> str:
    return "null" if v is None else {bool: "a boolean", int: "a number", float: "a number", list: "a list",
                                     dict: "an object", str: "a string"}.get(type(v), type(v).__name__)


def _z85_ok(key: str) -> bool:
    """40 Z85 characters whose 5-character groups each fit in 32 bits (what ZeroMQ decodes)."""
    if len(key) != 40 or any(c not in _Z85_VALUE for c in key):
        return False
    for i in range(0, 40, 5):
        v = 0
        for c in key[i:i + 5]:
            v = v * 85 + _Z85_VALUE[c]
        if v >= 1 << 32:
            return False
    return True


def _check_private(path: Path) -> None:
    """A file others can read may have leaked its secret: ours is made owner-only (with a warning), another
    user's is refused."""
    st = path.stat()
    if not st.st_mode & 0o077:
        return
    mode = stat.filemode(st.st_mode)
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} is readable by group or others ({mode}) and belongs to another user: "
                              f"refused, its credentials may be known to others; ask its owner for a private copy "
                              f"(chmod 600)")
    os.chmod(path, 0o600)
    warnings.warn(f"dynexec connection file {path} was readable by group or others ({mode}); made it owner-only "
                  f"(0600). Whoever read it may hold the cluster's credentials: restart the cluster if in doubt",
                  stacklevel=3)


def _wrong_role(path: Path, found: str, role: str) -> str:
    if role == "server":
        return (f"{path} is a client connection file (role {found!r}); `python -m dynexec.server --join` takes the "
                f"cluster's server join file, which `dynexec.cluster` writes next to it "
                f"(--server-file, by default {server_file_for(path).name})")
    return (f"{path} is a server join file (role {found!r}), for `python -m dynexec.server --join`; "
            f"Executor(connect=) takes the client connection file (the one `dynexec.cluster --connection-file` "
            f"writes)")


def read(path, role: str | None = None) -> dict:
    """Reads a connection file; `role` ("client", "server") is the kind the caller needs. Every problem is an
    error naming the file and the field, never showing a key (ConnectionFileError, a ValueError; a file of
    another user that others can read: PermissionError)."""
    path = Path(path)
    try:
        _check_private(path)
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no dynexec connection file at {path} (is the cluster started, and is the path "
                                f"the one given to --connection-file or --server-file?)") from None
    except UnicodeDecodeError:
        raise ConnectionFileError(f"{path} is not a dynexec connection file: it is not UTF-8 text") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:  # its message has a position, not the text
        raise ConnectionFileError(f"{path} is not a dynexec connection file: not JSON ({e})") from None
    if not isinstance(info, dict):
        raise ConnectionFileError(f"{path} is not a dynexec connection file: it holds {_type_name(info)}, "
                                  f"not a JSON object")

    def field(name, msg):
        return ConnectionFileError(f"{path}: field {name!r} {msg}")

    found = info.get("role")
    if found not in ROLES:
        if "role" not in info:
            raise field("role", "is missing (a file from an older dynexec? restart the cluster)")
        got = repr(found[:20]) if isinstance(found, str) else _type_name(found)
        raise field("role", f'must be "client" or "server", not {got}')
    if role is not None and found != role:
        raise ConnectionFileError(_wrong_role(path, found, role))
    for name in COMMON + ROLES[found]:
        if name not in info:
            raise field(name, f"is missing (a {found} connection file has {', '.join(COMMON + ROLES[found])})")
        if not isinstance(info[name], str):
            raise field(name, f"must be a string, not {_type_name(info[name])}")
    def check_endpoint(name, value):
        scheme, sep, rest = value.partition("://")
        if not sep or not rest:
            raise field(name, "must look like tcp://HOST:PORT or ipc://PATH")
        if scheme not in SCHEMES:
            raise field(name, f"has the unknown scheme {scheme[:20]!r} (dynexec listens on "
                              f"{' or '.join(s + '://' for s in SCHEMES)})")

    check_endpoint("endpoint", info["endpoint"])
    if "endpoints" in info:
        v = info["endpoints"]
        if not isinstance(v, list) or not v:
            raise field("endpoints", f"must be a non-empty list of strings, not "
                                     f"{'an empty list' if v == [] else _type_name(v)}")
        for i, e in enumerate(v):
            if not isinstance(e, str):
                raise field("endpoints", f"must hold strings only; item {i} is {_type_name(e)}")
            check_endpoint("endpoints", e)
    for name in ("server_public_key",) + ROLES[found]:
        if not _z85_ok(info[name]):
            n = len(info[name])
            raise field(name, "is not a CURVE key (40 Z85 characters" + (f"; this one has {n})" if n != 40 else ")"))
    for name, types in _OPTIONAL.items():
        v = info.get(name)
        if name in info and (not isinstance(v, types) or isinstance(v, bool)):
            want = {str: "a string", int: "a number"}.get(types[0], "a number")
            want += " or null" if type(None) in types else ""
            raise field(name, f"must be {want}, not {_type_name(v)}")
    return info


def endpoints(info: dict) -> list[str]:
    """The head's candidate endpoints in a file read by read(), in the order to try them."""
    return info.get("endpoints") or [info["endpoint"]]


_SIOCGIFCONF, _SIOCGIFFLAGS, _IFF_UP, _IFREQ = 0x8912, 0x8913, 0x1, 40  # <linux/sockios.h>; struct ifreq on 64-bit


def parse_ifconf(buf: bytes) -> list[tuple[str, str]]:
    """(interface, IPv4 address) for each struct ifreq in what SIOCGIFCONF fills in."""
    out = []
    for off in range(0, len(buf) - _IFREQ + 1, _IFREQ):
        name = buf[off:off + 16].split(b"\0", 1)[0].decode(errors="replace")
        family, = struct.unpack_from("=H", buf, off + 16)
        if family == socket.AF_INET:
            out.append((name, socket.inet_ntoa(buf[off + 20:off + 24])))
    return out


def interface_addresses() -> list[str]:
    """This host's IPv4 addresses on interfaces that are up, loopback excluded (no dependency: the
    SIOCGIFCONF ioctl); [] where they cannot be read."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            buf = array.array("B", bytes(_IFREQ * 256))
            n, _ = struct.unpack("iL", fcntl.ioctl(s.fileno(), _SIOCGIFCONF,
                                                   struct.pack("iL", len(buf), buf.buffer_info()[0])))
            out = []
            for name, addr in parse_ifconf(buf.tobytes()[:n]):
                flags, = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS,
                                                             struct.pack("256s", name.encode())), 16)
                if flags & _IFF_UP and not addr.startswith("127.") and addr not in out:
                    out.append(addr)
            return out
    except OSError:
        return []


def _try_tcp(endpoint: str, timeout: float) -> str:
    """"" when endpoint (tcp://HOST:PORT) accepts a TCP connection within timeout, else why not."""
    host, _, port = endpoint.partition("://")[2].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return ""
    except (OSError, ValueError) as e:
        return "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))


def pick_endpoint(candidates: list[str], timeout: float = 1.0, source="") -> str:
    """The first of the head's candidate endpoints that accepts a TCP connection within `timeout` seconds
    (all are tried at once). A single candidate, or an ipc:// one, is taken untried: a head that is not up
    yet is waited for there as before. ConnectionError listing what was tried when none answers."""
    if len(candidates) == 1 or not candidates[0].startswith("tcp://"):
        return candidates[0]
    first, why = _first_answering(candidates, timeout)
    if first is not None:
        return first
    tried = ", ".join(f"{e} ({why.get(e, 'timed out')})" for e in candidates)
    raise ConnectionError(f"no endpoint of the dynexec head{' in ' + str(source) if source else ''} accepts a "
                          f"TCP connection within {timeout:g} s; tried {tried}. From this host, one of them must be "
                          f"reachable (or start the cluster with --advertise ADDR)")


def _first_answering(candidates: list[str], timeout: float) -> tuple[str | None, dict]:
    """The first TCP endpoint, in list order, that accepts a connection within `timeout` s (all are tried at
    once), or None; and why each other one did not."""
    why = {}
    threads = [threading.Thread(target=lambda e=e: why.__setitem__(e, _try_tcp(e, timeout)), daemon=True)
               for e in candidates]  # daemons: a host name lookup that hangs is left behind
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 0.5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return next((e for e in candidates if why.get(e) == ""), None), why


# -- whose file is it, and does its cluster still run ----------------------------------------------
class StaleConnectionFileError(ConnectionFileError):
    """A connection file whose cluster is gone (its head's pid is dead, or its endpoint does not answer)."""


def _head_of(path) -> dict | None:
    """The JSON object in a file (only its host, pid and endpoint are used), or None if it holds none.
    FileNotFoundError and PermissionError pass: "none there" and "cannot tell" are no "not a connection file"."""
    try:
        info = json.loads(Path(path).read_text())
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_ours(info: dict) -> bool:
    return info.get("host") == socket.gethostname() and info.get("pid") == os.getpid()


def head_alive(info: dict, timeout: float = 1.0) -> bool | None:
    """Whether the head that wrote a connection file still runs: on this host, whether its pid is alive; on
    another, whether its endpoint takes a TCP connection within `timeout` s. None: cannot tell (no host or
    pid, not TCP)."""
    pid = info.get("pid")
    if info.get("host") == socket.gethostname() and isinstance(pid, int) and not isinstance(pid, bool):
        return _pid_alive(pid)
    candidates = info.get("endpoints") or [info.get("endpoint")]
    candidates = [e for e in candidates if isinstance(e, str) and e.startswith("tcp://")] if isinstance(candidates, list) else []
    if not candidates:
        return None
    return _first_answering(candidates, timeout)[0] is not None


def whose(info: dict) -> str:
    return f"the cluster at {info.get('host', '?')} (pid {info.get('pid', '?')})"


def claim(path, timeout: float = 1.0) -> str | None:
    """Before a cluster writes `path`: raises FileExistsError when a live cluster's file is there (naming
    that cluster's host and pid); removes a stale one and returns a note saying so; None when there is none
    (or it is our own)."""
    try:
        info = _head_of(path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise FileExistsError(f"{path} exists and cannot be read (another user's?): refusing to overwrite it; "
                              f"choose another file") from None
    if info is not None and is_ours(info):
        return None
    if info is not None and head_alive(info, timeout) is True:
        raise FileExistsError(f"{path} belongs to a running dynexec cluster, {whose(info)} (fields 'host' and "
                              f"'pid'): refusing to overwrite it; stop that cluster or choose another file")
    Path(path).unlink(missing_ok=True)  # so that clients meanwhile hear "no file", not of a dead cluster
    return (f"dynexec cluster: replacing {path}, which is no connection file" if info is None else
            f"dynexec cluster: replacing the stale {path} of {whose(info)}, which is gone")


def remove_if_ours(path) -> None:
    """Deletes `path` only while it is still this process's file: never another cluster's."""
    try:
        info = _head_of(path)
    except (FileNotFoundError, PermissionError):
        return
    if info is not None and is_ours(info):
        Path(path).unlink(missing_ok=True)


def read_live(path, role: str = "client", wait: float = 0.0, probe_timeout: float = 2.0) -> dict:
    """read(path, role), waiting up to `wait` s for the file to appear and for its head to be alive; a file
    whose head is gone raises StaleConnectionFileError (at once when wait is 0)."""
    deadline = time.monotonic() + wait
    while True:
        last = time.monotonic() >= deadline
        try:
            info = read(path, role)
        except FileNotFoundError as e:
            if last:
                raise FileNotFoundError(f"{e} (waited {wait:g} s)" if wait else str(e)) from None
            time.sleep(0.1)
            continue
        alive = head_alive(info, probe_timeout)
        if alive is not False:
            return info
        if last:
            here = info.get("host") == socket.gethostname()
            raise StaleConnectionFileError(
                f"{path} is stale: {whose(info)} is gone (" + (
                    f"no process has pid {info['pid']} on this host" if here else
                    f"its endpoint {info['endpoint']} did not answer within {probe_timeout:g} s") + ")"
                + (f"; waited {wait:g} s for a new one" if wait else ""))
        time.sleep(0.1)
