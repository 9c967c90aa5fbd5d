"""The client's own modules (beside the script, on a sys.path entry of its own) reach compute servers by
value; a module a server cannot import fails the job with a message naming the module and the server."""
import importlib
import json
import math
import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dynexec
from dynexec import _pickling, _runner
from dynexec.executor import job_payload
from hosts import hosts  # noqa: F401 (the fixture)
from test_cluster import start  # noqa: F401 (the fixture)

PHYSICS = '''
import math
G = 2.0
class Particle:
    def __init__(self, m):
        self.m = m
def _square(x):
    return x * x
def energy(x):
    return G * _square(x)
def mass(p):
    return p.m * G
def uses_extra(x):
    import {extra}  # on the client only: an import in a job's body is the server's to make
    return x
'''


def _write(d, name, text):
    (d / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.fixture
def physics(tmp_path, monkeypatch):
    """A helper module only this process can import (a directory of its own on sys.path, not the cwd of the
    servers the tests start), named per test."""
    name = f"physics_{tmp_path.name.replace('-', '_')}"
    extra = f"{name}_extra"
    mine = tmp_path / "mine"
    mine.mkdir()
    _write(mine, name, PHYSICS.format(extra=extra))
    _write(mine, extra, "X = 1\n")
    pkg = mine / f"{name}_pkg"
    pkg.mkdir()
    _write(pkg, "__init__", "")
    _write(pkg, "sub", "def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(mine))
    yield importlib.import_module(name)
    for m in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[m]


# -- (a) which modules go by value --------------------------------------------------------------------------
def test_modules_of_the_clients_own_directories_are_local_installed_and_standard_ones_are_not(physics):
    sub = importlib.import_module(f"{physics.__name__}_pkg.sub")
    assert _pickling.is_local_module(physics)
    assert _pickling.is_local_module(sub) and _pickling.is_local_module(sys.modules[f"{physics.__name__}_pkg"])
    for installed in (math, json, pickle, socket, np, pytest, _pickling.cloudpickle, dynexec, _pickling,
                      sys.modules["__main__"], None):
        assert not _pickling.is_local_module(installed), installed


def test_a_job_from_a_local_module_unpickles_where_that_module_cannot_be_imported(physics, tmp_path):
    sub = importlib.import_module(f"{physics.__name__}_pkg.sub")
    calls = [(physics.energy, 3), (physics.mass, physics.Particle(5)), (sub.triple, 4),
             (len, [physics.Particle(1)] * 2)]  # the last: an instance of a shipped module's class, nested
    jobs = [job_payload(fn, (x,), {}, ship=True) for fn, x in calls]
    from dynexec.executor import _function_blobs
    assert physics.energy not in _function_blobs  # that cache is for functions pickled by reference
    (tmp_path / "jobs.pickle").write_bytes(pickle.dumps(jobs))
    code = ("import pickle, sys; from dynexec import _runner\n"
            f"print([_runner.run(p)[:2] for p in pickle.loads(open({str(tmp_path / 'jobs.pickle')!r}, 'rb').read())])")
    # Run from / with the test's PYTHONPATH only: the tmp directory is not on that interpreter's sys.path.
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str([("value", 18.0), ("value", 10.0), ("value", 12), ("value", 2)])


def test_a_local_executor_ships_nothing_by_value(physics):
    from dynexec.executor import _function_blob, _function_blobs
    blob = _function_blob(physics.energy)  # local servers import it: they have the client's sys.path
    assert _function_blobs[physics.energy] is blob and physics.__name__ not in _pickling._local


def test_a_function_of_an_installed_module_stays_by_reference_and_cached():
    from dynexec.executor import _function_blob, _function_blobs
    blob = _function_blob(json.dumps, ship=True)
    assert isinstance(blob, bytes) and _function_blobs[json.dumps] is blob and b"dumps" in blob
    assert _pickling._local.get("json") is False


# -- (c) a module a server cannot import --------------------------------------------------------------------
def test_a_job_that_cannot_be_unpickled_for_a_missing_module_says_so_naming_the_server(tmp_path, monkeypatch):
    _write(tmp_path, "dx_only_here", "class C:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("dx_only_here")
    payload = pickle.dumps((pickle.dumps(len), pickle.dumps(((mod.C(),), {}))))  # by reference, as installed
    del sys.modules["dx_only_here"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    kind, type_name, message, tb, exc = _runner.run(payload)
    assert (kind, type_name) == ("error", "ModuleNotFoundError")
    assert f"compute server {socket.gethostname()} (pid " in message and "'dx_only_here'" in message
    assert "cannot be unpickled" in message and "installed package" in message and "pip install" in message
    assert pickle.loads(exc).name == "dx_only_here"


def _raises_import_error():
    raise ImportError("a job's own ImportError")


def _imports_nothing_anywhere():
    import dx_nowhere_at_all  # noqa: F401


def test_an_import_error_of_the_job_itself_is_left_as_it_is_a_missing_import_names_the_server():
    kind, type_name, message, *_ = _runner.run(job_payload(_raises_import_error, (), {}))
    assert (kind, type_name, message) == ("error", "ImportError", "a job's own ImportError")
    kind, type_name, message, *_ = _runner.run(job_payload(_imports_nothing_anywhere, (), {}))
    assert (kind, type_name) == ("error", "ModuleNotFoundError")
    assert f"module 'dx_nowhere_at_all' cannot be imported on compute server {socket.gethostname()} (pid " in message
    assert "where the job imports it" in message and "pip install" in message


# -- (b), (c) on a real cluster: its servers' PYTHONPATH does not have the tmp directory -------------------
@pytest.mark.timeout(120)
def test_on_an_mpirun_cluster_a_local_modules_function_runs_and_a_missing_import_names_the_server(start, physics):
    pytest.importorskip("mpi4py")
    c = start.cluster(3)
    sub = importlib.import_module(f"{physics.__name__}_pkg.sub")
    with dynexec.Executor(connect=c.conn) as ex:
        servers = ex.servers()
        c.note(s["pid"] for s in servers)
        futures = [ex.submit(physics.energy, i) for i in range(20)]
        assert [f.result(timeout=60) for f in futures] == [2.0 * i * i for i in range(20)]
        assert ex.submit(physics.mass, physics.Particle(4)).result(timeout=60) == 8.0
        assert list(ex.map(sub.triple, range(5), timeout=60)) == [0, 3, 6, 9, 12]
        assert list(ex.map(sub.triple, range(5), timeout=60, chunksize=2)) == [0, 3, 6, 9, 12]
        assert ex.submit(lambda x: physics.energy(x) + 1, 3).result(timeout=60) == 19.0  # via __main__-like code
        f = ex.submit(physics.uses_extra, 1)
        with pytest.raises(ModuleNotFoundError) as info:
            f.result(timeout=60)
        message = str(info.value)
        assert f"'{physics.__name__}_extra'" in message and "installed" in message and "pip install" in message
        assert any(f"compute server {s['host']} (pid {s['pid']})" in message for s in servers), (message, servers)
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()


CLIENT = """
import json, socket, sys
import dynexec
import physics  # beside this script: sys.path[0] here, on no server's path

with dynexec.Executor(connect=sys.argv[1]) as ex:
    futures = [ex.submit(physics.where, i) for i in range(20)]
    out = [f.result(timeout=60) for f in futures]
    ex.shutdown_cluster()
print(json.dumps({"me": socket.gethostname(), "out": out}))
"""


def test_a_script_s_helper_module_reaches_servers_on_other_hosts(hosts, tmp_path):
    from test_hosts import HostsCluster
    mine = tmp_path / "mine"
    mine.mkdir()
    _write(mine, "physics", "import socket\ndef where(i):\n    return [i * i, socket.gethostname()]\n")
    (mine / "client.py").write_text(CLIENT)
    c = HostsCluster(tmp_path, hosts)
    try:
        c.wait_ready(60)
        p = subprocess.run(hosts.cmd(2, [sys.executable, str(mine / "client.py"), str(c.conn)]),
                           capture_output=True, text=True, timeout=90, cwd="/")
        assert p.returncode == 0, p.stderr + "\n" + c.output()
        out = json.loads(p.stdout)
        assert [sq for sq, _ in out["out"]] == [i * i for i in range(20)]
        assert {host for _, host in out["out"]} <= set(hosts.names[1:])
        assert c.wait_exit(30) == 0, c.output()
    finally:
        c.kill()
