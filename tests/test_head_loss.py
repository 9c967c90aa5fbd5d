"""A client whose cluster head dies does not wait for ever: its outstanding jobs fail with ServerLostError."""
import os
import signal
import subprocess
import sys
import time

import pytest

import dynexec


def test_jobs_fail_clearly_when_the_head_dies(tmp_path):
    conn = tmp_path / "cluster.json"
    head = subprocess.Popen([sys.executable, "-m", "dynexec.cluster", "--archive", str(tmp_path / "archive"),
                             "--connection-file", str(conn)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not conn.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ex = dynexec.Executor(connect=conn)
        f = ex.submit(pow, 2, 3)  # accepted with no server yet: it waits for one
        assert not f.done()
        os.kill(head.pid, signal.SIGKILL)
        with pytest.raises(dynexec.ServerLostError, match="stopped answering"):
            f.result(timeout=30)
        ex.shutdown()  # returns: nothing is outstanding any more
    finally:
        head.kill()
        head.wait()
