"""A cluster started the documented way (`python -m dynexec.launch`) outlives a compute-server rank killed
with -9, and a stopped cluster fails its unfinished jobs with ShutDownError, not CancelledError.

Real processes on loopback; every process a test starts is killed by PID at teardown, every wait bounded.
"""
import os
import signal
import sys
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import dynexec
from dynexec import connection
from test_cluster import MPIRUN, Cluster, Job, alive, archived, nap, pytestmark, wait_for, wait_gone  # noqa: F401


class Launched(Cluster):
    """A cluster from `python -m dynexec.launch -n N --oversubscribe -- ...`."""

    def __init__(self, tmp: Path, n: int, *extra):
        super().__init__(tmp, n, extra, "cluster", launch=True)

    def kill(self):  # mpirun has a process group of its own and is no python: kill it by PID too
        self.note()
        for pid in self.seen:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        super().kill()


@pytest.fixture
def launch(tmp_path):
    jobs = []

    def start(n, *extra):
        c = Launched(tmp_path, n, *extra)
        jobs.append(c)
        return c.wait_ready()

    start.jobs = jobs
    yield start
    for j in jobs:
        j.kill()


def parent(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_kill_9_of_a_server_rank_leaves_the_cluster_running_and_a_new_server_takes_work(launch, tmp_path):
    c = launch(3, "--lease-seconds", "1")
    with dynexec.Executor(connect=c.conn) as ex:
        servers = ex.servers()
        assert len(servers) == 2
        victim, other = servers
        rank = parent(victim["pid"])  # the rank's own process, which supervises the server child
        assert b"dynexec.cluster" in Path(f"/proc/{rank}/cmdline").read_bytes()
        c.note([victim["pid"], other["pid"]])
        futures = [ex.submit(nap, i, 0.02) for i in range(200)]
        wait_for(lambda: sum(f.done() for f in futures) >= 20, 30, "20 jobs done")
        os.kill(rank, signal.SIGKILL)
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60))
            except (CancelledError, Exception) as e:  # noqa: B014 -- CancelledError is no Exception
                outcomes.append(repr(e))
        assert outcomes == list(range(200)), [o for o in outcomes if not isinstance(o, int)][:5]
        assert c.proc.poll() is None, "the cluster stopped when a server rank was killed:\n" + c.output()
        wait_for(lambda: victim["id"] not in {s["id"] for s in ex.servers()}, 10, "the lost server to leave")
        assert not alive(rank) and wait_for(lambda: not alive(victim["pid"]), 10, "its server child to leave")
        assert [s["id"] for s in ex.servers()] == [other["id"]]  # the head and the other server serve on
        assert [f.result(timeout=30) for f in [ex.submit(nap, i, 0) for i in range(10)]] == list(range(10))
        # A new server takes work again.
        joined = Job([sys.executable, "-m", "dynexec.server", "--join", str(connection.server_file_for(c.conn))],
                     tmp_path / "join.log")
        launch.jobs.append(joined)
        new = wait_for(lambda: [s for s in ex.servers() if s["id"] != other["id"]], 30, "a new server")[0]
        c.note([new["pid"]])
        more = [ex.submit(nap, i, 0.02) for i in range(100)]
        assert [f.result(timeout=60) for f in more] == list(range(100))
        done = {s["id"]: s["statistics"]["jobs_done"] for s in ex.servers()}
        assert done[new["id"]] > 0 and done[other["id"]] > 0, done
        ex.shutdown_cluster()
    assert c.wait_exit(30) == 0, c.output()
    jobs = archived(c.archive, c.info["session"])
    ids = [f.job_id for f in futures + more]
    assert len(jobs) == 310 and set(ids) <= set(jobs)  # once each: one record per job id
    assert {status for status, *_ in jobs.values()} == {"ok"}



def test_ctrl_c_of_the_launcher_fails_unfinished_jobs_as_stopped_not_cancelled(launch):
    c = launch(3, "--stop-grace", "0.5")
    with dynexec.Executor(connect=c.conn) as ex:
        c.note(s["pid"] for s in ex.servers())
        assert len(c.seen) >= 6  # mpirun, its 3 ranks, 2 server children
        futures = [ex.submit(nap, i, 60) for i in range(5)]  # 2 running, 3 waiting
        time.sleep(1.5)  # the first 2 have started
        os.kill(c.proc.pid, signal.SIGINT)  # what Ctrl-C in the launcher's terminal does
        for f in futures:
            with pytest.raises(dynexec.ShutDownError, match=r"the cluster at .* was stopped"):
                f.result(timeout=30)
            assert not f.cancelled()
    c.wait_exit(30)
    assert wait_gone(c.seen, 10) == []  # mpirun, the head, both ranks and their servers
    jobs = archived(c.archive, c.info["session"])
    assert set(jobs) == {f.job_id for f in futures} and {s for s, *_ in jobs.values()} == {"lost"}


def test_the_launcher_runs_mpirun_with_recovery_and_splits_options_at_the_double_dash():
    from dynexec.launch import command

    cmd = command(["-n", "4", "--hostfile", "h", "--", "--archive", "a", "--connection-file", "c.json"], "mpirun")
    assert cmd[:5] == ["mpirun", "--enable-recovery", "--mca", "orte_abort_on_non_zero_status", "0"]
    assert cmd[5:9] == ["-n", "4", "--hostfile", "h"]
    assert cmd[9:] == [sys.executable, "-m", "dynexec.cluster", "--archive", "a", "--connection-file", "c.json"]


def test_the_launcher_ends_an_mpirun_that_hangs_after_the_head_said_it_stopped(tmp_path, monkeypatch, capfd):
    # Open MPI 4.1 after a lost rank on another host: the head is done, mpirun never exits (tests/test_hosts.py).
    fake = tmp_path / "mpirun"
    fake.write_text("#!/bin/sh\necho 'dynexec cluster ready: 1 server'\necho 'dynexec cluster stopped (exit code 0)'\n"
                    f"echo $$ > {tmp_path / 'pid'}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr("dynexec.launch.STOP_WAIT", 0.5)
    monkeypatch.setenv("DYNEXEC_MPIRUN", str(fake))
    from dynexec import launch

    assert launch.main(["-n", "2", "--", "--connection-file", "c.json"]) == 0  # the head's code, not the signal's
    out, err = capfd.readouterr()
    assert out.splitlines() == ["dynexec cluster ready: 1 server", "dynexec cluster stopped (exit code 0)"]
    assert "mpirun did not end 0.5 s after the cluster stopped" in err and "terminating it" in err
    assert not alive(int((tmp_path / "pid").read_text()))


def test_a_rank_whose_head_fell_silent_waits_for_it_only_while_its_host_does_not_answer(monkeypatch):
    import socket
    import threading

    from dynexec import cluster

    with socket.socket() as s:  # a port nothing listens on: the head's host answers, the head is gone
        s.bind(("127.0.0.1", 0))
        gone = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    assert cluster._wait_for_head([gone], gone, 60, threading.Event()) is None
    # A cut link: nothing answers, then one endpoint does again.
    probes, answers_at = [], [3]  # the probe at which an endpoint answers again

    def first_answering(candidates, timeout):
        probes.append(candidates)
        return (candidates[-1], {}) if len(probes) == answers_at[0] else (None, {c: "timed out" for c in candidates})

    monkeypatch.setattr(connection, "_first_answering", first_answering)
    monkeypatch.setattr(cluster, "PROBE_INTERVAL", 0.01)
    assert cluster._wait_for_head(["tcp://a:1", "tcp://b:1"], "tcp://a:1", 60, threading.Event()) == "tcp://b:1"
    assert len(probes) == 3
    answers_at[0] = 0  # never
    assert cluster._wait_for_head(["tcp://a:1"], "tcp://a:1", 0.05, threading.Event()) is None  # gave up
    stop = threading.Event()
    stop.set()
    assert cluster._wait_for_head(["tcp://a:1"], "tcp://a:1", 60, stop) is None  # a signal to the rank
    assert cluster._wait_for_head(["ipc:///x"], "ipc:///x", 60, threading.Event()) is None  # this host's own head
