"""Clusters started with real mpirun on loopback: `python -m dynexec.cluster`, `python -m dynexec.server --join`.

Every process a test starts is torn down by PID (its mpirun, every descendant of it, every server pid seen),
and every wait is bounded.
"""
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import dynexec
from dynexec import connection

MPIRUN = shutil.which("mpirun")
pytestmark = [
    pytest.mark.skipif(MPIRUN is None, reason="mpirun is not on PATH (Debian: apt install openmpi-bin)"),
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                       reason="mpi4py is not importable (Debian: apt install python3-mpi4py)"),
    pytest.mark.timeout(120),
]

TESTS = Path(__file__).parent
PLUGIN = os.environ.get("DYNEXEC_EXAMPLE_PLUGIN")  # make test sets it
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo",
}


# Jobs: servers import this module by reference (PYTHONPATH below names this directory).
def square(x):
    return x * x


def nap(i, seconds):
    time.sleep(seconds)
    return i


def segfault():
    import ctypes
    ctypes.string_at(0)


# -- processes ----------------------------------------------------------------------------------------
def _children_map():
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid):
    children, out, todo = _children_map(), set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def wait_for(predicate, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Job:
    """One process tree we started (an mpirun, or a plain server): killed by PID at teardown."""

    def __init__(self, cmd, log: Path, env=None):
        env = {**os.environ, **MPI_ENV, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        for k in [k for k in env if k.startswith(("OMPI_COMM_WORLD", "PMIX_", "PMI_"))]:
            del env[k]  # in case pytest itself runs under mpirun
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     env=env, cwd=log.parent, start_new_session=True)
        self.seen = set()  # pids of its processes seen along the way

    def note(self, pids=()):
        self.seen |= descendants(self.proc.pid) | set(pids)

    def output(self):
        self._out.flush()
        return self.log.read_text()

    def wait_exit(self, timeout):
        self.note()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.proc.args[:6]} still running after {timeout} s; output:\n"
                                 + self.output()) from None

    def kill(self):
        self.note()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.seen:
            try:
                if alive(pid) and b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()


def mpirun(n, *args):
    return [MPIRUN, "--oversubscribe", "-n", str(n), sys.executable, *args]


class Cluster(Job):
    def __init__(self, tmp: Path, n: int, extra, name, launch=False):
        self.tmp = tmp
        self.conn = tmp / f"{name}.json"  # the client connection file
        self.server_file = connection.server_file_for(self.conn)  # the server join file, written next to it
        self.archive = tmp / "archive"
        if launch:  # the documented way: python -m dynexec.launch -n N [mpirun options] -- [cluster options]
            start = [sys.executable, "-m", "dynexec.launch", "-n", str(n), "--oversubscribe", "--"]
        else:
            start = mpirun(n, "-m", "dynexec.cluster") if n else [sys.executable, "-m", "dynexec.cluster"]
        cmd = start + ["--archive", str(self.archive), "--connection-file", str(self.conn), *extra]
        super().__init__(cmd, tmp / f"{name}.log")

    def wait_ready(self, timeout=60):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"the cluster exited with {self.proc.returncode}:\n{self.output()}")
            return "dynexec cluster ready" in self.output()
        wait_for(ready, timeout, "the cluster's ready line", interval=0.05)
        assert self.conn.exists() and self.server_file.exists()
        self.info = json.loads(self.conn.read_text())
        self.server_info = json.loads(self.server_file.read_text())
        self.note()
        return self


@pytest.fixture
def start(tmp_path):
    """start.cluster(n, *options) / start.join(cluster, k) / start.server(file, ...); all torn down after."""
    jobs = []

    class Starter:
        @staticmethod
        def cluster(n=3, *extra, name="cluster", ready=True):
            c = Cluster(tmp_path, n, extra, name)
            jobs.append(c)
            return c.wait_ready() if ready else c

        @staticmethod
        def join(c, k=1):
            j = Job(mpirun(k, "-m", "dynexec.server", "--join", str(c.server_file)),
                    tmp_path / f"join-{len(jobs)}.log")
            jobs.append(j)
            return j

        @staticmethod
        def server(file, *extra):
            j = Job([sys.executable, "-m", "dynexec.server", "--join", str(file), *extra],
                    tmp_path / f"server-{len(jobs)}.log")
            jobs.append(j)
            return j

    yield Starter
    for j in reversed(jobs):
        j.kill()


def archived(archive: Path, session: str):
    """job id -> (status, server, attempts, start_time), read with dynexec.read_archive (plain h5py)."""
    return {k: (r["status"], r["server"], r["attempts"], r["start_time"])
            for k, r in dynexec.read_archive(archive / f"{session}.h5").items()}


def server_ids(ex):
    return {s["id"]: s for s in ex.servers()}


# -- the tests ----------------------------------------------------------------------------------------
def test_a_thousand_jobs_from_a_client_outside_mpirun_each_archived_once(start):
    c = start.cluster(3)
    assert stat.S_IMODE(c.conn.stat().st_mode) == 0o600
    assert stat.S_IMODE(c.server_file.stat().st_mode) == 0o600
    # Each file holds its own role's key pair only.
    assert c.info["role"] == "client" and "compute_secret_key" not in c.info
    assert c.server_info["role"] == "server" and "client_secret_key" not in c.server_info
    assert "ready: 2 servers" in c.output()
    with dynexec.Executor(connect=c.conn) as ex:  # this test process was not started by mpirun
        servers = ex.servers()
        c.note(s["pid"] for s in servers)
        assert len(servers) == 2
        # Each compute server is a child of its rank, so that its death does not make mpirun abort the rest.
        ranks = {p for p in descendants(c.proc.pid) if b"dynexec.cluster" in Path(f"/proc/{p}/cmdline").read_bytes()}
        assert len(ranks) == 3
        assert all(s["pid"] not in ranks and s["pid"] in descendants(c.proc.pid) for s in servers)
        futures = [ex.submit(square, i) for i in range(1000)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(1000)]
        labelled = ex.options(label="from a client", tags=["remote"]).submit(square, 5)  # what it was travels too
        assert labelled.result(timeout=60) == 25
        done = {sid: s["statistics"]["jobs_done"] for sid, s in server_ids(ex).items()}
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    assert wait_gone(c.seen | {c.proc.pid}, 10) == []
    assert not c.conn.exists() and not c.server_file.exists()
    jobs = archived(c.archive, c.info["session"])
    assert set(jobs) == {f.job_id for f in futures} | {labelled.job_id} and len(jobs) == 1001
    r = dynexec.find(labelled.job_id, c.archive)
    assert (r.label, r.tags, r.function, r.summary) == ("from a client", ("remote",), "test_cluster.square", "square(5)")
    assert {status for status, *_ in jobs.values()} == {"ok"}
    assert Counter(server for _, server, *_ in jobs.values()) == Counter(done)  # both servers took jobs
    assert len(done) == 2 and min(done.values()) > 0
    assert dynexec.find(futures[7].job_id, c.archive).value == 49


def test_server_joined_by_a_second_mpirun_gets_jobs_within_a_second(start):
    c = start.cluster(2, "--lease-seconds", "1")
    with dynexec.Executor(connect=c.conn) as ex:
        first = set(server_ids(ex))
        busy = [ex.submit(nap, i, 0.05) for i in range(10)]  # the first server has a queue
        joined = start.join(c, 1)
        new = wait_for(lambda: [s for s in ex.servers() if s["id"] not in first], 30, "the joined server")[0]
        registered = time.time()
        futures = [ex.submit(nap, i, 0.05) for i in range(20)]
        assert [f.result(timeout=30) for f in busy + futures] == list(range(10)) + list(range(20))
        joined.note([new["pid"]])
        # kill -9 of the joined server: its rank starts another (mpirun does not abort), which replaces it.
        os.kill(new["pid"], signal.SIGKILL)
        wait_for(lambda: new["id"] not in server_ids(ex), 10, "the killed server to leave the registry")
        again = wait_for(lambda: [s for s in ex.servers() if s["id"] not in first | {new["id"]}], 30, "its replacement")
        joined.note([again[0]["pid"]])
        assert again[0]["pid"] != new["pid"] and joined.proc.poll() is None
        assert "starting another" in joined.output()
        assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(10)]] == [i * i for i in range(10)]
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    assert joined.wait_exit(20) == 0, joined.output()
    jobs = archived(c.archive, c.info["session"])
    on_new = sorted(jobs[f.job_id][3] for f in futures if jobs[f.job_id][1] == new["id"])
    assert len(on_new) >= 5, f"the joined server ran {len(on_new)} of 20 jobs"
    latency = on_new[0] - registered
    print(f"joined server's first job started {latency * 1000:.0f} ms after it was seen registered")
    assert latency < 1.0


def test_kill_9_of_a_server_mid_run_loses_no_job_and_doubles_none(start):
    c = start.cluster(3, "--lease-seconds", "1")
    with dynexec.Executor(connect=c.conn) as ex:
        servers = ex.servers()
        c.note(s["pid"] for s in servers)
        victim = servers[0]
        futures = [ex.submit(nap, i, 0.05) for i in range(60)]
        time.sleep(0.3)  # both servers are busy, each with more to do
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.time()
        assert sorted(f.result(timeout=30) for f in futures) == list(range(60))
        all_done = time.time()
        wait_for(lambda: victim["id"] not in server_ids(ex), 10, "the killed server to leave the registry")
        assert c.proc.poll() is None, "mpirun aborted the cluster when a server was killed"
        # its rank started a replacement
        wait_for(lambda: len(ex.servers()) == 2, 30, "the killed server's replacement")
        c.note(s["pid"] for s in ex.servers())
        again = [ex.submit(square, i) for i in range(20)]
        assert [f.result(timeout=30) for f in again] == [i * i for i in range(20)]
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    jobs = archived(c.archive, c.info["session"])
    ids = [f.job_id for f in futures + again]
    assert set(jobs) == set(ids) and len(jobs) == len(ids) == 80
    assert {status for status, *_ in jobs.values()} == {"ok"}
    redispatched = [j for j in ids if jobs[j][2] > 1]
    assert redispatched, "the kill hit no job in flight"
    assert all(jobs[j][1] != victim["id"] for j in redispatched)
    first_redone = min(jobs[j][3] for j in redispatched)
    print(f"kill -9 -> first re-dispatched job started {(first_redone - killed) * 1000:.0f} ms later; "
          f"{len(redispatched)} re-dispatched; all 60 done {all_done - killed:.2f} s after the kill")


def test_a_connection_with_a_wrong_secret_is_refused(start, tmp_path):
    c = start.cluster(2)
    wrong = connection.new_keys()
    bad = connection.write(tmp_path / "wrong-secret.json", c.info["endpoint"],
                           {**wrong, "server_public_key": c.info["server_public_key"]}, "client")
    bad_server = connection.write(tmp_path / "wrong-secret.server.json", c.info["endpoint"],
                                  {**wrong, "server_public_key": c.info["server_public_key"]}, "server")
    # A compute server without the secret is refused as well: it never registers.
    intruder = start.server(bad_server, "--head-timeout", "1")
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="secret"):
        dynexec.Executor(connect=bad, start_timeout=2)
    assert time.monotonic() - t < 10
    # (It should also leave after --head-timeout, but ServerHost blocks in a DEALER send once the head has
    # refused its handshake: see the report on the C++ side. The fixture kills it.)
    with dynexec.Executor(connect=c.conn) as ex:  # the cluster goes on as before
        assert len(ex.servers()) == 1 and intruder.proc.pid not in {s["pid"] for s in ex.servers()}
        assert ex.submit(square, 12).result(timeout=30) == 144
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()


def test_ctrl_c_on_mpirun_stops_every_process_and_leaves_the_archive_complete(start):
    c = start.cluster(3)
    joined = start.join(c, 1)  # servers of a second mpirun are told to leave as well
    with dynexec.Executor(connect=c.conn) as ex:
        servers = wait_for(lambda: len(ex.servers()) == 3 and ex.servers(), 30, "3 servers")
        pids = {s["pid"] for s in servers}
        futures = [ex.submit(square, i) for i in range(100)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(100)]
    c.note(pids)
    joined.note()
    everything = c.seen | joined.seen | {c.proc.pid, joined.proc.pid}
    assert pids <= everything
    os.kill(c.proc.pid, signal.SIGINT)  # what Ctrl-C in mpirun's terminal does
    c.wait_exit(20)  # mpirun says 1 after an interrupt, whatever its ranks did
    assert "unfinished" not in c.output()
    assert joined.wait_exit(20) == 0, joined.output()
    assert wait_gone(everything, 10) == []
    assert not c.conn.exists()
    jobs = archived(c.archive, c.info["session"])
    assert set(jobs) == {f.job_id for f in futures}
    assert {status for status, *_ in jobs.values()} == {"ok"}


def test_head_without_mpirun_and_servers_from_a_later_mpirun(start):
    plugin = ("--plugin", PLUGIN) if PLUGIN else ()  # servers that join load the cluster's plugins
    c = start.cluster(0, "--lease-seconds", "1", *plugin)  # no mpirun: a head only
    assert "ready: 0 servers" in c.output()
    with dynexec.Executor(connect=c.conn) as ex:
        early = ex.submit(square, 12)  # it waits for a server, and the client can see why
        status = ex.status()
        assert status["waiting"] == {"python": 1} and status["servers"] == []
        assert status["why"] == ["1 job(s) of 'python' wait: no compute server offers it"]
        joined = start.join(c, 2)
        assert early.result(timeout=60) == 144
        servers = wait_for(lambda: len(ex.servers()) == 2 and ex.servers(), 30, "2 servers from the later mpirun")
        joined.note(s["pid"] for s in servers)
        os.kill(servers[0]["pid"], signal.SIGKILL)  # its rank starts another; the other rank carries on
        wait_for(lambda: servers[0]["id"] not in server_ids(ex) and len(ex.servers()) == 2, 30,
                 "the killed server to be replaced")
        joined.note(s["pid"] for s in ex.servers())
        assert joined.proc.poll() is None, "mpirun aborted its other rank when one server was killed"
        futures = [ex.submit(square, i) for i in range(50)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]
        assert servers[0]["id"] not in {dynexec.find(f.job_id, c.archive).server for f in futures}
        if PLUGIN:
            wait_for(lambda: "example.integrate" in ex.servers()[0]["services"], 10, "the plugin's services")
            assert round(ex.submit_service("example.integrate", a=0.0, b=3.141592653589793).result(timeout=30), 6) == 2.0
        plain = start.server(c.server_file)  # one more server, without mpirun; SIGTERM makes it leave
        wait_for(lambda: len(ex.servers()) == 3, 30, "the plain server")
        plain.proc.send_signal(signal.SIGTERM)
        assert plain.wait_exit(10) == 0, plain.output()
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    assert joined.wait_exit(20) == 0, joined.output()
    assert wait_gone(c.seen | joined.seen | {c.proc.pid, joined.proc.pid}, 10) == []


def test_on_a_cluster_a_job_that_kills_servers_fails_and_running_cancel_kill_tell_the_truth(start, tmp_path):
    c = start.cluster(3, "--lease-seconds", "2")
    with dynexec.Executor(connect=c.conn) as ex:
        c.note(s["pid"] for s in ex.servers())
        bad = ex.submit(segfault)
        good = [ex.submit(square, i) for i in range(30)]
        # Each rank starts a new server when its server dies; the new one tells the head how the old one ended.
        with pytest.raises(dynexec.ServerDiedError, match="SIGSEGV") as info:
            bad.result(timeout=60)
        assert bad.job_id in str(info.value)
        assert [f.result(timeout=60) for f in good] == [i * i for i in range(30)]
        assert "starting another" in c.output()
        wait_for(lambda: len(ex.servers()) == 2, 30, "the servers' replacements")
        c.note(s["pid"] for s in ex.servers())
        # running(), cancel() and kill() through the client
        long = [ex.submit(nap, i, 30) for i in range(2)]  # one on each server
        queued = ex.submit(nap, 9, 0)                       # behind them
        wait_for(lambda: all(f.running() for f in long), 30, "the long jobs to start")
        assert not queued.running()
        assert long[0].cancel() is False
        assert queued.cancel() is True and queued.cancelled()
        assert all(f.kill() for f in long)
        for f in long:
            with pytest.raises(dynexec.JobKilledError):
                f.result(timeout=30)
        assert ex.submit(square, 7).result(timeout=60) == 49
        limited = ex.options(time_limit=0.5).submit(nap, 1, 60)  # a time limit holds on cluster servers too
        with pytest.raises(dynexec.JobTimeoutError):
            limited.result(timeout=60)
        printed = ex.submit(print, "from a cluster server")  # and what a job prints is kept
        printed.result(timeout=60)
        assert printed.stdout == "from a cluster server\n"
        c.note(s["pid"] for s in ex.servers())
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    jobs = archived(c.archive, c.info["session"])
    assert jobs[queued.job_id][0] == "cancelled" and {jobs[f.job_id][0] for f in long} == {"killed"}
    assert jobs[limited.job_id][0] == "timeout"


def test_a_cluster_client_sees_what_its_jobs_print_while_they_run(start, capsys):
    c = start.cluster(2)
    with dynexec.Executor(connect=c.conn, echo_output=True) as ex:
        c.note(s["pid"] for s in ex.servers())
        f = ex.submit(print, "hello from the cluster")
        f.result(timeout=60)
        assert f.stdout == "hello from the cluster\n"
        with dynexec.Executor(connect=c.conn) as quiet:  # another client, without echo: sees nothing of it
            g = quiet.submit(print, "not echoed")
            g.result(timeout=60)
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    out = capsys.readouterr().out
    assert f"[{f.job_id}] hello from the cluster" in out, out
    assert "not echoed" not in out


def test_a_client_cannot_register_as_a_compute_server_nor_a_server_submit(start, tmp_path):
    c = start.cluster(2)
    # A client holds the client file only: its key pair, made into a server join file, gets it in as a client,
    # and the head drops its registration (a client posing as a server would have its results unpickled in
    # other clients' processes).
    posing = connection.write(tmp_path / "posing.server.json", c.info["endpoint"],
                              {"server_public_key": c.info["server_public_key"],
                               "compute_public_key": c.info["client_public_key"],
                               "compute_secret_key": c.info["client_secret_key"]}, "server")
    rogue = start.server(posing, "--head-timeout", "2")
    assert rogue.wait_exit(30) == 2, rogue.output()  # never answered: it leaves, the head silent to it
    assert "dropped a message of type 1" in c.output() and "role client" in c.output()
    assert c.info["client_secret_key"] not in c.output()
    with dynexec.Executor(connect=c.conn) as ex:  # the cluster works on; the rogue never was a server
        servers = ex.servers()
        assert len(servers) == 1 and rogue.proc.pid not in {s["pid"] for s in servers}
        assert ex.submit(square, 11).result(timeout=30) == 121
        # The server join file's credentials get nobody in as a client: its hello is dropped.
        s = c.server_info
        with pytest.raises(RuntimeError):
            dynexec._core.Client(s["endpoint"], s["server_public_key"], s["compute_public_key"],
                                 s["compute_secret_key"], 1.0)
        # Each file given where the other belongs fails, naming the file and the one to use.
        with pytest.raises(connection.ConnectionFileError, match=r"server join file.*client connection file"):
            dynexec.Executor(connect=c.server_file)
        wrong = start.server(c.conn)
        assert wrong.wait_exit(30) == 2
        assert str(c.conn) in wrong.output() and c.server_file.name in wrong.output()
        assert len(ex.servers()) == 1
        c.note(s["pid"] for s in ex.servers())
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()


def test_a_second_cluster_on_a_live_clusters_file_refuses_at_once_naming_it(start):
    first = start.cluster(0)  # a head only: it says nobody will run the jobs
    out = first.output()
    assert "ready: 0 servers" in out and "no compute server: jobs wait until one joins with" in out
    assert f"--join {first.server_file}" in out
    second = start.cluster(2, "--start-timeout", "60", ready=False)  # the same files
    t = time.monotonic()
    assert second.wait_exit(30) != 0, second.output()
    assert time.monotonic() - t < 30  # before, not after, the start timeout
    out = second.output()
    assert str(first.conn) in out and f"the cluster at {first.info['host']} (pid {first.info['pid']})" in out
    assert "ready" not in out
    assert json.loads(first.conn.read_text()) == first.info  # untouched, and still the first's
    with dynexec.Executor(connect=first.conn) as ex:
        assert ex.status()["servers"] == []
        # Another cluster takes the file over (as if started once this one seemed gone): stopping this one
        # must not delete it.
        theirs = connection.write(first.conn, first.info["endpoint"], connection.new_keys(), "client")
        ex.shutdown_cluster()
    assert first.wait_exit(30) == 0, first.output()
    assert theirs.exists() and json.loads(theirs.read_text())["pid"] == os.getpid()
    assert not first.server_file.exists()  # its own


def test_a_killed_heads_file_is_stale_for_clients_and_replaced_by_the_next_cluster(start):
    first = start.cluster(0)
    first.kill()  # kill -9: nothing removes its files
    assert first.conn.exists()
    t = time.monotonic()
    with pytest.raises(connection.StaleConnectionFileError) as e:
        dynexec.Executor(connect=first.conn)
    assert time.monotonic() - t < 2
    assert f"the cluster at {first.info['host']} (pid {first.info['pid']}) is gone" in str(e.value)
    second = start.cluster(2)
    assert "replacing the stale" in second.output() and f"pid {first.info['pid']}" in second.output()
    assert "ready: 1 server," in second.output()
    with dynexec.Executor(connect=second.conn) as ex:
        assert ex.submit(square, 6).result(timeout=60) == 36
        ex.shutdown_cluster()
    assert second.wait_exit(30) == 0, second.output()
    assert not second.conn.exists() and not second.server_file.exists()


def test_a_client_waits_for_a_cluster_started_after_it(start, tmp_path):
    conn = tmp_path / "cluster.json"
    done = {}

    def client():
        try:
            with dynexec.Executor(connect=conn, wait=60) as ex:
                done["result"] = ex.submit(square, 9).result(timeout=60)
                ex.shutdown_cluster()
        except BaseException as e:  # noqa: BLE001 - reported below
            done["error"] = e

    waiter = threading.Thread(target=client, daemon=True)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not conn.exists()  # waiting, not failed
    c = start.cluster(2, ready=False)
    waiter.join(90)
    assert not waiter.is_alive() and done.get("result") == 81, done
    assert c.wait_exit(30) == 0, c.output()
