"""Compute-server processes on this machine, started, watched and replaced by an Executor."""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import connection


class LocalServers:
    """Starts `python -m dynexec.server` processes that join the head through a private server join file.

    Each watches this process and leaves when it is gone, so none outlives its Executor. A supervisor thread
    replaces one that dies (a signal, an exit code), after telling the head how it ended so that its running
    job is charged for it; when new ones keep dying before they register, it gives up (on_broken).
    """

    MAX_FAILED_STARTS = 3  # in a row: the environment is broken, not a job
    MAX_RESTARTS_PER_MINUTE = 120

    def __init__(self, slots: int, threads: int):
        self._dir = Path(tempfile.mkdtemp(prefix="dynexec-"))  # 0700
        self.connection_file: Path | None = None
        self._slots, self._threads = slots, threads
        self.procs: list[subprocess.Popen] = []  # every one started; the supervisor drops those that ended
        self._lock = threading.Lock()            # guards procs, _retired, _registered
        self._retired: set[int] = set()          # pids told to leave: their end is no crash
        self._registered: set[int] = set()       # pids seen registered
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def bind(self) -> str:
        """Where the head listens for them: a Unix socket in the private directory, which keeps other users
        out as CURVE does on TCP, without encrypting every byte of every result."""
        return f"ipc://{self._dir / 'head'}"

    def joined(self, endpoint: str, keys: dict) -> None:
        """Writes the server join file the servers read (compute-server credentials only), once the head
        listens at `endpoint`."""
        self.connection_file = connection.write(self._dir / "server.json", endpoint, keys, role="server")

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
        with self._lock:
            self.procs += new
        return new

    def add(self, engine, timeout: float) -> str:
        """Starts one more server and returns its registry ID once it has registered."""
        proc = self.start(1)[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in engine.servers():
                if s["pid"] == proc.pid:
                    return s["id"]
            if proc.poll() is not None:
                raise RuntimeError(f"the new compute server (pid {proc.pid}) {describe_end(proc.returncode)} before "
                                   f"it registered (its error output is above)")
            time.sleep(0.01)
        self.retire(proc.pid)
        raise RuntimeError(f"the new compute server (pid {proc.pid}) did not register within {timeout:g} s")

    def retire(self, pid: int | None, grace: float = 5.0) -> None:
        """Server `pid` is told to leave: its end is expected; it is ended after `grace` if still there."""
        if pid is None:
            return
        with self._lock:
            self._retired.add(pid)
            proc = next((p for p in self.procs if p.pid == pid), None)
        if proc is None:
            return

        def end():
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        threading.Thread(target=end, name=f"dynexec-retire-{pid}", daemon=True).start()

    def supervise(self, engine, on_broken, closing: threading.Event) -> None:
        """Watches the servers from a thread of its own until stop(). Once `closing` is set, the head tells
        them to leave: an exit with code 0 is then no crash."""
        self._supervisor = threading.Thread(target=self._watch, args=(engine, on_broken, closing),
                                            name="dynexec-supervisor", daemon=True)
        self._supervisor.start()

    def _watch(self, engine, on_broken, closing) -> None:
        failed_starts = 0
        restarts: collections.deque[float] = collections.deque()
        gave_up = False
        while not self._stopping.wait(0.05):
            with self._lock:
                if closing.is_set() and not self.procs:
                    return
                unregistered = [p.pid for p in self.procs if p.pid not in self._registered]
            if unregistered:
                pids = {s["pid"] for s in engine.servers()}
                with self._lock:
                    self._registered.update(pid for pid in unregistered if pid in pids)
            with self._lock:
                ended = [p for p in self.procs if p.poll() is not None]
                self.procs = [p for p in self.procs if p not in ended]
                live = len(self.procs)
            for proc in ended:
                with self._lock:
                    expected = proc.pid in self._retired
                    registered = proc.pid in self._registered
                if expected or self._stopping.is_set() or (proc.returncode == 0 and closing.is_set()):
                    continue
                why = describe_end(proc.returncode)
                engine.server_exited(proc.pid, why)  # its running job is charged; the rest run elsewhere
                failed_starts = 0 if registered else failed_starts + 1
                now = time.monotonic()
                while restarts and now - restarts[0] > 60:
                    restarts.popleft()
                if gave_up or failed_starts >= self.MAX_FAILED_STARTS or len(restarts) >= self.MAX_RESTARTS_PER_MINUTE:
                    if not gave_up:
                        sys.stderr.write(f"dynexec: compute server (pid {proc.pid}) {why}; not starting another: "
                                         f"{failed_starts} in a row ended before registering, or "
                                         f"{len(restarts)} were started in the last minute\n")
                    gave_up = True
                    if live == 0:
                        on_broken(f"every compute server of this executor has ended and none could be started "
                                  f"again (the last: pid {proc.pid} {why})")
                        return
                    continue
                if proc.returncode != 4:  # 4: it ended on purpose, to stop a job that would not stop
                    sys.stderr.write(f"dynexec: compute server (pid {proc.pid}) {why}; starting another\n")
                restarts.append(now)
                try:
                    self.start(1)
                except OSError as e:
                    failed_starts += 1
                    sys.stderr.write(f"dynexec: cannot start a compute server: {e}\n")

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
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()
        deadline = time.monotonic() + timeout
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def describe_end(returncode: int) -> str:
    """How a process ended, in words: "was killed by signal 11 (SIGSEGV)", "exited with code 1"."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        extra = " (kill -9, or the out-of-memory killer)" if -returncode == signal.SIGKILL else ""
        return f"was killed by signal {-returncode} ({name}){extra}"
    if returncode == 4:
        return "ended to stop a job that was killed or ran past its time limit"
    return f"exited with code {returncode}"
