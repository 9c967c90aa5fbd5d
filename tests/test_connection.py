"""Connection files: one per role, every malformed one fails naming the file and the field, and no error
ever shows a secret (neither ours nor one pybind11 would print when a wrong type reaches _core)."""
import json
import os
import shutil
import socket
import stat
import struct
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
    ("endpoints", "tcp://a:1", "must be a non-empty list of strings, not a string"),
    ("endpoints", [], "must be a non-empty list of strings, not an empty list"),
    ("endpoints", ["tcp://a:1", 5], "must hold strings only; item 1 is a number"),
    ("endpoints", ["tcp://a:1", "udp://b:2"], "unknown scheme 'udp'"),
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


# -- the head's candidate endpoints -----------------------------------------------------------------
def test_a_list_of_endpoints_is_written_with_the_first_as_endpoint(tmp_path, keys):
    candidates = ["tcp://10.0.0.5:7000", "tcp://192.168.1.5:7000", "tcp://head:7000"]
    path = connection.write(tmp_path / "c.json", candidates, keys, "client")
    info = connection.read(path, role="client")
    assert info["endpoint"] == candidates[0] and info["endpoints"] == candidates
    assert connection.endpoints(info) == candidates
    one = connection.read(connection.write(tmp_path / "one.json", ENDPOINT, keys, "server"))
    assert "endpoints" not in one and connection.endpoints(one) == [ENDPOINT]  # as older files have it


def _ifreq(name, family, addr):
    sin = struct.pack("=H", family) + b"\0\0" + socket.inet_aton(addr) + bytes(8)
    return name.encode().ljust(16, b"\0") + sin.ljust(24, b"\0")


def test_parse_ifconf_reads_each_ipv4_ifreq():
    buf = (_ifreq("lo", socket.AF_INET, "127.0.0.1") + _ifreq("eth0", socket.AF_INET, "10.213.4.2")
           + _ifreq("weird", socket.AF_INET6, "0.0.0.0") + _ifreq("ib0", socket.AF_INET, "192.168.7.9"))
    assert len(buf) == 4 * 40
    assert connection.parse_ifconf(buf) == [("lo", "127.0.0.1"), ("eth0", "10.213.4.2"), ("ib0", "192.168.7.9")]
    assert connection.parse_ifconf(buf[:50]) == [("lo", "127.0.0.1")]  # a partial record is ignored


@pytest.mark.skipif(shutil.which("ip") is None, reason="no `ip` to compare with")
def test_interface_addresses_are_those_ip_shows_on_interfaces_up_without_loopback():
    shown = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True,
                                      timeout=10).stdout)
    want = [a["local"] for i in shown if "UP" in i["flags"] for a in i.get("addr_info", [])
            if a.get("family") == "inet" and not a["local"].startswith("127.")]
    assert sorted(connection.interface_addresses()) == sorted(set(want))


@pytest.fixture
def listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _refused():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_pick_endpoint_takes_the_first_that_accepts(listener):
    assert connection.pick_endpoint([_refused(), "tcp://no-such-host.invalid:1", listener]) == listener
    with socket.socket() as s2:
        s2.bind(("127.0.0.1", 0))
        s2.listen()
        second = f"tcp://127.0.0.1:{s2.getsockname()[1]}"
        assert connection.pick_endpoint([_refused(), second, listener]) == second  # order wins, not speed
    only = _refused()
    assert connection.pick_endpoint([only]) == only  # one candidate: untried, the server waits for its head
    assert connection.pick_endpoint(["ipc:///tmp/x", only]) == "ipc:///tmp/x"


def test_pick_endpoint_lists_what_it_tried_when_none_answers():
    bad = [_refused(), "tcp://no-such-host.invalid:1"]
    t = time.monotonic()
    with pytest.raises(ConnectionError) as e:
        connection.pick_endpoint(bad, timeout=1.0, source="/x/cluster.json")
    assert time.monotonic() - t < 3.0
    msg = str(e.value)
    assert "/x/cluster.json" in msg and all(b in msg for b in bad) and "refused" in msg and "--advertise" in msg


def test_a_client_whose_endpoints_all_fail_says_what_it_tried(tmp_path, keys):
    bad = [_refused(), _refused()]
    path = connection.write(tmp_path / "c.json", bad, keys, "client")
    with pytest.raises(ConnectionError, match="tried " + bad[0].replace(".", r"\.")) as e:
        dynexec.Executor(connect=path)
    assert str(path) in str(e.value)
    assert_no_secret(str(e.value), keys)


def test_a_server_whose_endpoints_all_fail_leaves_with_2_saying_what_it_tried(tmp_path, keys):
    bad = [_refused(), "tcp://no-such-host.invalid:1"]
    path = connection.write(tmp_path / "s.json", bad, keys, "server")
    p = subprocess.run([sys.executable, "-m", "dynexec.server", "--join", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert str(path) in p.stderr and all(b in p.stderr for b in bad)
    assert_no_secret(p.stderr + p.stdout, keys)


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
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait(10)


HERE = socket.gethostname()


def test_head_alive_by_pid_here_and_by_tcp_elsewhere(listener):
    assert connection.head_alive({"host": HERE, "pid": os.getpid(), "endpoint": ENDPOINT}) is True
    assert connection.head_alive({"host": HERE, "pid": dead_pid(), "endpoint": listener}) is False  # pid decides
    assert connection.head_alive({"host": "elsewhere.invalid", "pid": os.getpid(), "endpoint": listener}) is True
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


def test_a_head_elsewhere_is_alive_if_any_of_its_endpoints_answers(listener):
    """The head advertises every interface address; the first may be one this host cannot reach."""
    assert connection.head_alive({"host": "elsewhere.invalid", "pid": 1,
                                  "endpoint": _refused(), "endpoints": [_refused(), listener]}) is True
    assert connection.head_alive({"host": "elsewhere.invalid", "pid": 1,
                                  "endpoint": _refused(), "endpoints": [_refused(), _refused()]}) is False


def test_wait_for_a_file_that_appears_later(tmp_path, keys, listener):
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
    timer = threading.Timer(0.5, connection.write, (path, listener, keys, "client"))
    timer.start()
    try:
        info = connection.read_live(path, wait=30)
    finally:
        timer.join()
    assert info["endpoint"] == listener and info["pid"] == os.getpid()



def test_claim_refuses_a_file_it_cannot_read(tmp_path, keys, monkeypatch):
    path = connection.write(tmp_path / "cluster.json", ENDPOINT, keys, "client", pid=dead_pid())

    def denied(self, *a, **k):  # what another user's 0600 file gives a non-root user
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(connection.Path, "read_text", denied)
    with pytest.raises(FileExistsError, match="cannot be read"):
        connection.claim(path)
    connection.remove_if_ours(path)
    assert path.exists()  # whose it is cannot be told: it stays
