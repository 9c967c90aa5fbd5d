"""A client whose cluster head dies or falls silent does not wait for ever: within seconds its outstanding jobs
fail with ServerLostError saying the head stopped, and later calls say so too (not "wrong secret")."""
import os
import signal
import subprocess
import sys
import time

import pytest

import dynexec


def _head(tmp_path):
    conn = tmp_path / "cluster.json"
    head = subprocess.Popen([sys.executable, "-m", "dynexec.cluster", "--archive", str(tmp_path / "archive"),
                             "--connection-file", str(conn)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not conn.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert conn.exists(), "the head did not start"
    return head, conn


@pytest.fixture
def head(tmp_path):
    head, conn = _head(tmp_path)
    try:
        yield head, conn
    finally:
        if head.poll() is None:
            head.send_signal(signal.SIGCONT)
            head.kill()
        head.wait()


def test_jobs_fail_clearly_when_the_head_dies(head):
    proc, conn = head
    ex = dynexec.Executor(connect=conn)
    f = ex.submit(pow, 2, 3)  # accepted with no server yet: it waits for one
    assert not f.done()
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(dynexec.ServerLostError, match="head at .* stopped"):
        f.result(timeout=10)  # its connection closes: known at once, not after a timeout
    with pytest.raises(RuntimeError, match="stopped") as e:
        ex.submit(pow, 2, 3)
    assert "secret" not in str(e.value)
    ex.shutdown()  # returns: nothing is outstanding any more


def test_a_client_submitting_in_a_loop_learns_the_head_died(head):
    proc, conn = head
    ex = dynexec.Executor(connect=conn)
    futures = [ex.submit(pow, 2, i) for i in range(100)]
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    with pytest.raises(RuntimeError, match="stopped"):
        while time.monotonic() < deadline:  # submits never block on the network: they go on until it is known
            futures.append(ex.submit(pow, 2, 3))
            time.sleep(0.001)
    for f in futures:
        with pytest.raises(dynexec.ServerLostError):
            f.result(timeout=5)
    ex.shutdown()


def test_jobs_fail_when_the_head_falls_silent(head):
    proc, conn = head
    ex = dynexec.Executor(connect=conn, start_timeout=4)
    f = ex.submit(pow, 2, 3)
    os.kill(proc.pid, signal.SIGSTOP)  # connected, but nothing answers any more
    with pytest.raises(dynexec.ServerLostError, match="stopped"):
        f.result(timeout=20)
    ex.shutdown()
