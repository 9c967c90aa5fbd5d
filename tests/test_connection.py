"""Connection files: one per role, every malformed one fails naming the file and the field, and no error
ever shows a secret (neither ours nor one pybind11 would print when a wrong type reaches _core)."""
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

import dynexec
from dynexec import _core, connection
from dynexec.connection import ConnectionFileError

ENDPOINT = "tcp://127.0.0.1:9"  # nothing listens there; nothing here connects


@pytest.fixture
def keys():
    return connection.new_keys()


def secrets(keys):
    return [v for k, v in keys.items() if k.endswith("_secret_key")]


def assert_no_secret(message, keys):
    for s in secrets(keys):
        assert s not in message
        assert s[:10] not in message  # not even a part of it


def write_json(path, info, mode=0o600):
    path.write_text(json.dumps(info))
    os.chmod(path, mode)
    return path


def test_each_role_has_a_file_of_its_own_with_only_its_key_pair(tmp_path, keys):
    client = connection.write(tmp_path / "cluster.json", ENDPOINT, keys, "client", session="s1", archive=None)
    server = connection.write(connection.server_file_for(client), ENDPOINT, keys, "server")
    assert server.name == "cluster.server.json"
    assert stat.S_IMODE(client.stat().st_mode) == stat.S_IMODE(server.stat().st_mode) == 0o600
    c, s = connection.read(client, role="client"), connection.read(server, role="server")
    assert c["role"] == "client" and c["client_secret_key"] == keys["client_secret_key"] and c["session"] == "s1"
    assert s["role"] == "server" and s["compute_secret_key"] == keys["compute_secret_key"]
    assert s["server_public_key"] == c["server_public_key"] == keys["server_public_key"]
    for absent in ("server_secret_key", "compute_public_key", "compute_secret_key"):
        assert absent not in c
    for absent in ("server_secret_key", "client_public_key", "client_secret_key"):
        assert absent not in s
    assert connection.read(client)["role"] == "client"  # no role asked: either kind


def test_the_wrong_role_names_the_file_and_the_one_to_use(tmp_path, keys):
    client = connection.write(tmp_path / "cluster.json", ENDPOINT, keys, "client")
    server = connection.write(tmp_path / "cluster.server.json", ENDPOINT, keys, "server")
    with pytest.raises(ConnectionFileError) as e:
        connection.read(client, role="server")
    msg = str(e.value)
    assert str(client) in msg and "client connection file" in msg and "cluster.server.json" in msg
    assert "--server-file" in msg
    assert_no_secret(msg, keys)
    with pytest.raises(ConnectionFileError) as e:
        connection.read(server, role="client")
    msg = str(e.value)
    assert str(server) in msg and "server join file" in msg and "--connection-file" in msg
    assert_no_secret(msg, keys)
    with pytest.raises(ConnectionFileError, match="server join file"):
        dynexec.Executor(connect=server)


def test_dynexec_server_refuses_a_client_file(tmp_path, keys):
    client = connection.write(tmp_path / "cluster.json", ENDPOINT, keys, "client")
    p = subprocess.run([sys.executable, "-m", "dynexec.server", "--join", str(client)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert str(client) in p.stderr and "server join file" in p.stderr and "cluster.server.json" in p.stderr
    assert_no_secret(p.stderr + p.stdout, keys)


def _good(keys, role="client"):
    pair = connection.ROLES[role]
    return {"role": role, "endpoint": ENDPOINT, "server_public_key": keys["server_public_key"],
            **{k: keys[k] for k in pair}, "session": "s", "archive": "/tmp/a"}


BAD_KEY_CHARS = "~" * 40
OVERFLOW = "#####" * 8  # Z85 characters, but each group is more than 32 bits


@pytest.mark.parametrize("field, value, expect", [
    ("endpoint", 5555, "must be a string, not a number"),
    ("endpoint", None, "must be a string, not null"),
    ("endpoint", "udp://127.0.0.1:5", "unknown scheme 'udp'"),
    ("endpoint", "127.0.0.1:5", "tcp://HOST:PORT"),
    ("server_public_key", None, "must be a string, not null"),
    ("server_public_key", 12345, "must be a string, not a number"),
    ("client_public_key", ["x"], "must be a string, not a list"),
    ("client_secret_key", None, "must be a string, not null"),
    ("client_secret_key", "SHORT", "not a CURVE key (40 Z85 characters; this one has 5)"),
    ("client_secret_key", "TRUNC", "not a CURVE key"),  # the real secret cut short: see below
    ("client_secret_key", BAD_KEY_CHARS, "not a CURVE key (40 Z85 characters)"),
    ("client_secret_key", OVERFLOW, "not a CURVE key"),
    ("role", None, 'must be "client" or "server", not null'),
    ("role", "admin", "must be \"client\" or \"server\", not 'admin'"),
    ("session", 7, "must be a string, not a number"),
    ("archive", 7, "must be a string or null, not a number"),
    ("lease_seconds", "2", "must be a number, not a string"),
])
def test_a_malformed_field_is_named_and_no_secret_shown(tmp_path, keys, field, value, expect):
    info = _good(keys)
    if value == "TRUNC":
        value = keys["client_secret_key"][:39]
    info[field] = value
    path = write_json(tmp_path / "bad.json", info)
    with pytest.raises(ConnectionFileError) as e:
        connection.read(path, role="client")
    msg = str(e.value)
    assert str(path) in msg and repr(field) in msg and expect in msg, msg
    assert_no_secret(msg, keys)


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("drop", ["role", "endpoint", "server_public_key", "public", "secret"])
def test_a_missing_field_is_named(tmp_path, keys, role, drop):
    info = _good(keys, role)
    pub, sec = connection.ROLES[role]
    field = {"public": pub, "secret": sec}.get(drop, drop)
    del info[field]
    path = write_json(tmp_path / "missing.json", info)
    with pytest.raises(ConnectionFileError) as e:
        connection.read(path, role=role)
    msg = str(e.value)
    assert str(path) in msg and repr(field) in msg and "missing" in msg, msg
    assert_no_secret(msg, keys)


@pytest.mark.parametrize("text, expect", [("{not json", "not JSON"), ("[1, 2]", "not a JSON object"),
                                          ("null", "not a JSON object")])
def test_not_a_connection_file(tmp_path, text, expect):
    path = tmp_path / "junk.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConnectionFileError, match=expect) as e:
        connection.read(path)
    assert str(path) in str(e.value)


def test_a_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dynexec connection file at .*nothing.json"):
        connection.read(tmp_path / "nothing.json")


def test_our_file_readable_by_others_is_made_private_with_a_warning(tmp_path, keys):
    path = connection.write(tmp_path / "open.json", ENDPOINT, keys, "client")
    os.chmod(path, 0o644)
    with pytest.warns(UserWarning, match="open.json was readable by group or others") as w:
        info = connection.read(path, role="client")
    assert info["client_secret_key"] == keys["client_secret_key"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_no_secret(str(w[0].message), keys)


@pytest.mark.skipif(os.getuid() != 0, reason="making a file of another user needs root")
def test_a_readable_file_of_another_user_is_refused(tmp_path, keys):
    path = connection.write(tmp_path / "theirs.json", ENDPOINT, keys, "client")
    os.chmod(path, 0o640)
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(PermissionError) as e:
        connection.read(path, role="client")
    msg = str(e.value)
    assert str(path) in msg and "another user" in msg
    assert_no_secret(msg, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not ours to change


def test_core_names_a_bad_key_argument_and_never_shows_it(keys):
    sp, cp, cs = keys["server_public_key"], keys["client_public_key"], keys["client_secret_key"]
    # A wrong type: pybind11's own error would list every argument, secrets included.
    with pytest.raises(TypeError) as e:
        _core.Client(ENDPOINT, sp, cp, None, 0.1)
    assert "client_secret_key must be a str, not NoneType" in str(e.value)
    assert_no_secret(str(e.value), keys)
    with pytest.raises(TypeError, match="endpoint must be a str, not int"):
        _core.Client(5555, sp, cp, cs, 0.1)
    # A bad key: named without its value (ZeroMQ itself would only say "Invalid argument").
    for bad in (cs[:30], "~" * 40, OVERFLOW):
        with pytest.raises(ValueError, match="client_secret_key: ") as e:
            _core.Client(ENDPOINT, sp, cp, bad, 0.1)
        assert_no_secret(str(e.value), keys)
        assert bad not in str(e.value)
    with pytest.raises(ValueError, match="compute_secret_key: ") as e:
        _core.ServerHost(ENDPOINT, sp, keys["compute_public_key"], keys["compute_secret_key"][:-1])
    assert_no_secret(str(e.value), keys)
    with pytest.raises(TypeError, match="compute_public_key must be a str") as e:
        _core.ServerHost(ENDPOINT, sp, None, keys["compute_secret_key"])
    assert_no_secret(str(e.value), keys)


def test_engine_listen_names_a_bad_or_missing_key(keys):
    listen = {"bind": "tcp://127.0.0.1:*", **connection.listen_keys(keys)}
    args = (0, 1, 1, "round_robin", None, 2.0, 0.5, 3, 0)
    with pytest.raises(ValueError, match=r"listen\[server_secret_key\]: ") as e:
        _core.Engine(*args, listen={**listen, "server_secret_key": keys["server_secret_key"][:20]})
    assert_no_secret(str(e.value), keys)
    with pytest.raises(TypeError, match=r"listen\[compute_public_key\] must be a str, not NoneType"):
        _core.Engine(*args, listen={**listen, "compute_public_key": None})
    with pytest.raises(ValueError, match="listen lacks compute_public_key"):
        _core.Engine(*args, listen={k: v for k, v in listen.items() if k != "compute_public_key"})
    with pytest.raises(ValueError, match="must differ"):  # one key for both roles would make clients servers
        _core.Engine(*args, listen={**listen, "compute_public_key": keys["client_public_key"]})


def test_a_local_executors_connection_file_is_a_server_join_file(tmp_path):
    with dynexec.Executor(max_workers=1, archive=False) as ex:
        info = connection.read(ex.connection_file, role="server")
        assert info["endpoint"].startswith("ipc://") and "client_secret_key" not in info
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32
        with pytest.raises(ConnectionFileError, match="server join file"):
            dynexec.Executor(connect=ex.connection_file)


# -- live or stale: who wrote the file, and does that head still run ---------------------------------
def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(30)
    return p.pid  # reaped: no process has it now


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once closed


@pytest.fixture
def listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait(10)


HERE = socket.gethostname()


def test_head_alive_by_pid_here_and_by_tcp_elsewhere(listening):
    assert connection.head_alive({"host": HERE, "pid": os.getpid(), "endpoint": ENDPOINT}) is True
    assert connection.head_alive({"host": HERE, "pid": dead_pid(), "endpoint": listening}) is False  # pid decides
    assert connection.head_alive({"host": "elsewhere.invalid", "pid": os.getpid(), "endpoint": listening}) is True
    t = time.monotonic()
    assert connection.head_alive({"host": "elsewhere.invalid", "pid": 1,
                                  "endpoint": f"tcp://127.0.0.1:{closed_port()}"}) is False
    assert time.monotonic() - t < 2
    assert connection.head_alive({"endpoint": "ipc:///tmp/x"}) is None  # cannot tell: used as today


def test_claim_refuses_a_live_clusters_file_and_replaces_a_stale_one(tmp_path, keys, sleeper):
    path = tmp_path / "cluster.json"
    assert connection.claim(path) is None  # none there
    connection.write(path, ENDPOINT, keys, "client")
    assert connection.claim(path) is None and path.exists()  # our own
    connection.write(path, ENDPOINT, keys, "client", pid=sleeper)
    with pytest.raises(FileExistsError) as e:
        connection.claim(path)
    msg = str(e.value)
    assert str(path) in msg and f"{HERE} (pid {sleeper})" in msg and "'pid'" in msg and path.exists()
    assert_no_secret(msg, keys)
    pid = dead_pid()
    connection.write(path, ENDPOINT, keys, "client", pid=pid)
    note = connection.claim(path)
    assert "stale" in note and str(path) in note and f"pid {pid}" in note and not path.exists()
    assert_no_secret(note, keys)


def test_remove_if_ours_leaves_another_clusters_file(tmp_path, keys, sleeper):
    mine = connection.write(tmp_path / "mine.json", ENDPOINT, keys, "client")
    theirs = connection.write(tmp_path / "theirs.json", ENDPOINT, keys, "client", pid=sleeper)
    connection.remove_if_ours(mine)
    connection.remove_if_ours(theirs)
    connection.remove_if_ours(tmp_path / "absent.json")
    assert not mine.exists() and theirs.exists()


def test_a_client_fails_at_once_on_a_stale_file(tmp_path, keys):
    pid = dead_pid()
    path = connection.write(tmp_path / "cluster.json", ENDPOINT, keys, "client", pid=pid)
    t = time.monotonic()
    with pytest.raises(connection.StaleConnectionFileError) as e:
        dynexec.Executor(connect=path)  # not the 60 s start_timeout
    assert time.monotonic() - t < 2
    msg = str(e.value)
    assert str(path) in msg and f"the cluster at {HERE} (pid {pid}) is gone" in msg and "stale" in msg
    assert_no_secret(msg, keys)
    far = connection.write(tmp_path / "far.json", f"tcp://127.0.0.1:{closed_port()}", keys, "client",
                           host="elsewhere.invalid")
    t = time.monotonic()
    with pytest.raises(connection.StaleConnectionFileError, match="did not answer within 2 s"):
        dynexec.Executor(connect=far)
    assert time.monotonic() - t < 3


def test_wait_for_a_file_that_appears_later(tmp_path, keys, listening):
    path = tmp_path / "later.json"
    t = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"later\.json.*waited 0\.3 s"):
        connection.read_live(path, wait=0.3)
    assert 0.3 <= time.monotonic() - t < 2
    with pytest.raises(FileNotFoundError):
        dynexec.Executor(connect=path)  # wait=0: at once, as before
    with pytest.raises(ValueError, match="pass connect= too"):
        dynexec.Executor(max_workers=1, wait=5)
    # A stale file first, then the live one that replaces it, within `wait`.
    connection.write(path, ENDPOINT, keys, "client", pid=dead_pid())
    timer = threading.Timer(0.5, connection.write, (path, listening, keys, "client"))
    timer.start()
    try:
        info = connection.read_live(path, wait=30)
    finally:
        timer.join()
    assert info["endpoint"] == listening and info["pid"] == os.getpid()



def test_claim_refuses_a_file_it_cannot_read(tmp_path, keys, monkeypatch):
    path = connection.write(tmp_path / "cluster.json", ENDPOINT, keys, "client", pid=dead_pid())

    def denied(self, *a, **k):  # what another user's 0600 file gives a non-root user
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(connection.Path, "read_text", denied)
    with pytest.raises(FileExistsError, match="cannot be read"):
        connection.claim(path)
    connection.remove_if_ours(path)
    assert path.exists()  # whose it is cannot be told: it stays
