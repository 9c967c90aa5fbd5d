"""A later mpirun job finds the cluster through the MPI name service (ompi-server), not the file's endpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import dynexec
from dynexec import connection

pytestmark = pytest.mark.skipif(not (shutil.which("mpirun") and shutil.which("ompi-server")),
                                reason="needs Open MPI's mpirun and ompi-server")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo")


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_server_joins_through_the_published_name(tmp_path):
    uri, conn, name = tmp_path / "ompi.uri", tmp_path / "cluster.json", f"dynexec-test-{os.getpid()}"
    procs = []

    def start(cmd):
        procs.append(subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL))
        return procs[-1]

    try:
        start(["ompi-server", "--no-daemonize", "-r", str(uri)])
        wait_for(lambda: uri.exists() and uri.read_text().strip(), 10, "ompi-server")
        mpirun = ["mpirun", "--oversubscribe", "--ompi-server", f"file:{uri}"]
        start(mpirun + ["-n", "2", sys.executable, "-m", "dynexec.cluster", "--archive", str(tmp_path / "archive"),
                        "--connection-file", str(conn), "--publish", name])
        wait_for(conn.exists, 60, "the cluster")
        # The joining job's server join file holds the credentials only: its endpoint is wrong on purpose.
        info = json.loads(connection.server_file_for(conn).read_text())
        secret_only = tmp_path / "secret.json"
        secret_only.write_text(json.dumps({**info, "endpoint": "tcp://127.0.0.1:9"}))
        os.chmod(secret_only, 0o600)
        with dynexec.Executor(connect=conn) as ex:
            assert len(ex.servers()) == 1
            start(mpirun + ["-n", "1", sys.executable, "-m", "dynexec.server", "--join", str(secret_only),
                            "--name", name])
            wait_for(lambda: len(ex.servers()) == 2, 30, "the server found by name")
            assert sum(ex.map(abs, range(-20, 0))) == sum(range(1, 21))
            ex.shutdown_cluster()
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
