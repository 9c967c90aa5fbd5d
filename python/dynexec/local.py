"""Compute-server processes on this machine, started and stopped by an Executor."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import connection


class LocalServers:
    """Starts `python -m dynexec.server` processes that join the head through a private connection file.

    Each watches this process and leaves when it is gone, so none outlives its Executor.
    """

    def __init__(self, slots: int, threads: int):
        self._dir = Path(tempfile.mkdtemp(prefix="dynexec-"))  # 0700
        self.connection_file: Path | None = None
        self._slots, self._threads = slots, threads
        self.procs: list[subprocess.Popen] = []

    @property
    def bind(self) -> str:
        """Where the head listens for them: a Unix socket in the private directory, which keeps other users
        out as CURVE does on TCP, without encrypting every byte of every result."""
        return f"ipc://{self._dir / 'head'}"

    def joined(self, endpoint: str, keys: dict) -> None:
        """Writes the connection file the servers read, once the head listens at `endpoint`."""
        self.connection_file = connection.write(self._dir / "connection.json", endpoint, keys)

    def start(self, n: int) -> list[subprocess.Popen]:
        # The head is this process: silent for long when it is stopped (Ctrl-Z, SIGSTOP, a debugger), it still
        # comes back, so they do not leave on its silence (--head-timeout inf) but when it is gone (--parent-pid).
        cmd = [sys.executable, "-m", "dynexec.server", "--join", str(self.connection_file),
               "--slots", str(self._slots), "--threads", str(self._threads), "--parent-pid", str(os.getpid()),
               "--head-timeout", "inf"]
        # Like multiprocessing's spawn: the servers import what this process can (callables pickled by reference).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + [p for p in sys.path if p]))
        # A process group of their own: Ctrl-C in a terminal or Jupyter's interrupt (SIGINT to the caller's
        # group) interrupts the caller only.
        new = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, process_group=0) for _ in range(n)]
        self.procs += new
        return new

    def wait_registered(self, engine, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        have = 0
        while time.monotonic() < deadline:
            have = engine.wait_for_servers(n, 0.1)
            # A server that cannot start (a broken environment) fails fast, not after the timeout.
            if have >= n or sum(p.poll() is None for p in self.procs) < n:
                break
        if have < n:
            dead = {p.pid: p.poll() for p in self.procs if p.poll() is not None}
            self.stop()
            why = f"exited (pid: exit code): {dead}" if dead else f"none registered within {timeout:g} s"
            raise RuntimeError(f"only {have} of {n} compute-server processes registered; {why} "
                               f"(their error output is above)")

    def stop(self, timeout: float = 5.0) -> None:
        """Waits for the processes the head has told to leave; kills any still there after `timeout`."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
