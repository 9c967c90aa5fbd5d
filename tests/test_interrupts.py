"""Interrupts stay with the caller (issue 9, point 1): real scripts in a session of their own get SIGINT (as a
terminal's Ctrl-C or Jupyter's interrupt sends it, to the whole process group) or SIGSTOP/SIGCONT, and their
compute servers, futures and exit behave."""
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import dynexec

pytestmark = pytest.mark.timeout(180)

PYTHON = sys.executable


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is gone too
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Script:
    """A Python script run in a session (and process group) of its own, its stdout read line by line; kills it,
    its group and every compute server it reported ("servers PID...") on close, also when a test fails."""

    def __init__(self, tmp_path, source: str):
        path = tmp_path / "script.py"
        path.write_text(textwrap.dedent(source))
        env = dict(os.environ, PYTHONUNBUFFERED="1", DYNEXEC_ARCHIVE=str(tmp_path / "archive"))
        self.proc = subprocess.Popen([PYTHON, str(path)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        self.server_pids: list[int] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        self._stderr_read = threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append),
                                             daemon=True)
        self._stderr_read.start()

    def err(self) -> str:
        """Its stderr so far; all of it once it has ended."""
        if self.proc.poll() is not None:
            self._stderr_read.join(10)
        return "\n".join(line for line in self.stderr if line is not None)

    @staticmethod
    def _read(stream, put):
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def expect(self, prefix: str, timeout: float = 60.0) -> list[str]:
        """The words after `prefix` on the next line starting with it; fails on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} within {timeout} s; stderr:\n" + self.err())
            if line is None:
                pytest.fail(f"script ended before printing {prefix!r}; stderr:\n" + self.err())
            if line.startswith(prefix):
                words = line[len(prefix):].split()
                if prefix == "servers":
                    self.server_pids += [int(w) for w in words]
                return words

    def signal_group(self, sig) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"script still running {timeout} s later; stderr:\n" + self.err())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        for pid in self.server_pids:  # in process groups of their own
            kill_pid(pid)


@pytest.fixture
def script(tmp_path):
    made = []

    def run(source: str) -> Script:
        made.append(Script(tmp_path, source))
        return made[-1]

    yield run
    for s in made:
        s.close()


def wait_gone(pids, timeout=20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_sigint_to_the_group_interrupts_the_wait_only(script):
    s = script("""
        import time, dynexec
        ex = dynexec.Executor(max_workers=2, archive=False)
        print("servers", *sorted(x["pid"] for x in ex.servers()))
        slow = ex.submit(time.sleep, 3)
        later = [ex.submit(pow, 2, i) for i in range(20)]
        print("waiting")
        try:
            slow.result(timeout=60)
            print("interrupted no")
        except KeyboardInterrupt:
            print("interrupted yes")
        print("after", *sorted(x["pid"] for x in ex.servers()))
        print("results", slow.result(timeout=60), sum(f.result(timeout=60) for f in later))
        print("new", ex.submit(pow, 3, 2).result(timeout=60))
        ex.shutdown()
        print("done")
    """)
    servers = s.expect("servers")
    s.expect("waiting")
    time.sleep(0.5)
    s.signal_group(signal.SIGINT)
    assert s.expect("interrupted") == ["yes"]
    assert all(alive(p) for p in s.server_pids)  # the SIGINT did not reach them
    assert s.expect("after") == servers  # still registered
    assert s.expect("results") == ["None", str(sum(2 ** i for i in range(20)))]  # pending futures resolve
    assert s.expect("new") == ["9"]  # and the executor takes new work
    s.expect("done")
    assert s.wait(30) == 0
    assert wait_gone(s.server_pids) == []


BACKLOG = """
    import time, dynexec
    from concurrent.futures import wait
    futures = []
    try:
        with dynexec.Executor(max_workers=2, archive=False, processes={processes}) as ex:
            print("servers", *sorted(x["pid"] for x in ex.servers()))
            futures = [ex.submit(time.sleep, {seconds}) for _ in range({count})]
            print("waiting")
            wait(futures)
    except KeyboardInterrupt:
        print("cancelled", sum(f.cancelled() for f in futures), "done", sum(f.done() for f in futures),
              "of", len(futures))
        raise
"""


def test_ctrl_c_inside_with_cancels_the_backlog_and_exits(script):
    # Run to the end, the backlog would take 200 s on two servers.
    s = script(BACKLOG.format(seconds=0.02, count=20_000, processes=True))
    s.expect("servers")
    s.expect("waiting")
    time.sleep(0.5)
    s.signal_group(signal.SIGINT)
    cancelled, _, done, _, total = s.expect("cancelled", timeout=30)
    assert int(total) == 20_000 and int(done) == 20_000  # every future settled, most of them cancelled
    assert int(cancelled) > 19_000
    assert s.wait(30) == -signal.SIGINT  # Python's exit status for an unhandled KeyboardInterrupt
    assert wait_gone(s.server_pids) == []


def test_a_script_interrupted_outside_with_exits_without_running_the_backlog(script):
    s = script("""
        import time, dynexec
        from concurrent.futures import wait
        ex = dynexec.Executor(max_workers=2, archive=False)
        print("servers", *sorted(x["pid"] for x in ex.servers()))
        futures = [ex.submit(time.sleep, 0.02) for _ in range(20_000)]
        print("waiting")
        wait(futures)  # Ctrl-C here is not caught: the exit hook shuts the executor down
    """)
    s.expect("servers")
    s.expect("waiting")
    time.sleep(0.5)
    s.signal_group(signal.SIGINT)
    assert s.wait(30) in (-signal.SIGINT, 130)
    assert "KeyboardInterrupt" in s.err()
    assert wait_gone(s.server_pids) == []


def test_a_second_ctrl_c_during_the_exit_ends_the_process(script):
    # The running jobs take 600 s: the first Ctrl-C's shutdown waits for them, the second must not. Servers
    # in threads of the script: a job started there cannot be taken back.
    s = script(BACKLOG.format(seconds=600, count=50, processes=False))
    assert s.expect("servers") == [str(s.proc.pid)] * 2
    s.server_pids = []
    s.expect("waiting")
    time.sleep(1.0)  # both servers have started a job
    s.signal_group(signal.SIGINT)
    time.sleep(1.5)  # now inside the with block's shutdown, waiting for the running jobs
    assert s.proc.poll() is None
    s.signal_group(signal.SIGINT)
    cancelled, _, done, _, total = s.expect("cancelled", timeout=30)
    assert (int(cancelled), int(done), int(total)) == (48, 48, 50)  # the two running jobs were left behind
    assert s.wait(30) == 130  # as a shell reports Ctrl-C
    assert "exiting without waiting for running jobs" in s.err()


def test_the_exit_does_not_wait_for_jobs_no_server_can_run(script):
    s = script("""
        import os, signal, time, dynexec
        ex = dynexec.Executor(max_workers=1, lease_seconds=0.5, archive=False)
        pid = ex.servers()[0]["pid"]
        print("servers", pid)
        os.kill(pid, signal.SIGSTOP)  # alive, but its lease runs out: no server is left to run anything
        deadline = time.monotonic() + 30
        while ex.servers() and time.monotonic() < deadline:
            time.sleep(0.05)
        futures = [ex.submit(pow, 2, i) for i in range(5)]
        print("exiting", len(ex.servers()))
    """)
    s.expect("servers")
    assert s.expect("exiting") == ["0"]
    assert s.wait(60) == 0
    assert "no compute server is registered to run 5 waiting job(s)" in s.err()


def test_a_caller_stopped_for_longer_than_its_lease_keeps_its_servers(script):
    # Stopped for longer than the lease (0.5 s) and the servers' head timeout (10 s), then resumed.
    s = script("""
        import time, dynexec
        from concurrent.futures import wait
        ex = dynexec.Executor(max_workers=2, lease_seconds=0.5, archive=False)
        print("servers", *sorted(x["pid"] for x in ex.servers()))
        futures = [ex.submit(time.sleep, 0.01) for _ in range(500)]
        print("waiting")
        done, pending = wait(futures, timeout=120)
        print("finished", len(done), "of", len(futures), "failed", sum(f.exception() is not None for f in done))
        print("after", *sorted(x["pid"] for x in ex.servers()))
        print("stats", ex.stats()["redispatched"], ex.stats()["lost"])
        ex.shutdown()
    """)
    servers = s.expect("servers")
    s.expect("waiting")
    time.sleep(0.5)
    s.signal_group(signal.SIGSTOP)
    try:
        time.sleep(11.0)
        assert all(alive(p) for p in s.server_pids)
    finally:
        s.signal_group(signal.SIGCONT)
    assert s.expect("finished", timeout=120) == ["500", "of", "500", "failed", "0"]
    assert s.expect("after") == servers  # the same processes, still registered
    assert s.expect("stats") == ["0", "0"]  # their leases were extended: no job had to run again
    assert s.wait(30) == 0


def test_a_server_whose_lease_expired_registers_again_and_gets_work():
    with dynexec.Executor(max_workers=2, lease_seconds=0.5, archive=False) as ex:
        stopped = ex.servers()[0]
        os.kill(stopped["pid"], signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and stopped["id"] in {x["id"] for x in ex.servers()}:
                time.sleep(0.05)
            assert stopped["id"] not in {x["id"] for x in ex.servers()}  # its lease ran out
            assert sum(ex.map(pow, [2] * 20, range(20))) == 2 ** 20 - 1  # the other one runs everything
        finally:
            os.kill(stopped["pid"], signal.SIGCONT)
        deadline = time.monotonic() + 30
        again = []
        while time.monotonic() < deadline and not again:
            again = [x for x in ex.servers() if x["pid"] == stopped["pid"]]
            time.sleep(0.05)
        assert again and again[0]["id"] != stopped["id"]  # registered anew
        other = next(x for x in ex.servers() if x["pid"] != stopped["pid"])
        os.kill(other["pid"], signal.SIGSTOP)  # until its lease runs out, then only the re-registered one is left
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and other["id"] in {x["id"] for x in ex.servers()}:
                time.sleep(0.05)
            assert [x["id"] for x in ex.servers()] == [again[0]["id"]]
            assert ex.submit(pow, 3, 3).result(timeout=30) == 27
        finally:
            os.kill(other["pid"], signal.SIGCONT)


NOTEBOOK_CELLS = [
    """
    import os, time, dynexec
    ex = dynexec.Executor(max_workers=2, archive=False)
    pids = sorted(x["pid"] for x in ex.servers())
    print("servers", *pids)
    """,
    "long = ex.submit(time.sleep, 600); long.result()",  # interrupted
    """
    print("after", *sorted(x["pid"] for x in ex.servers()))
    print("results", sum(f.result(timeout=60) for f in [ex.submit(pow, 2, i) for i in range(10)]))
    """,
    # The interrupted job still runs (an interrupt stays with the caller): stop it, or shutdown waits for it.
    "print('running', long.running(), 'killed', long.kill()); ex.shutdown(cancel_futures=True)",
    # What a job prints reaches the cell that submitted it, labelled with its job ID.
    """
    with dynexec.Executor(max_workers=1, archive=False, echo_output=True) as ex2:
        job = ex2.submit(print, "hello from a job")
        job.result(timeout=60)
    print("job", job.job_id)
    """,
]


def test_jupyter_interrupt_keeps_the_servers_and_the_next_cell_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec = tmp_path / "kernels" / "dynexec-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dynexec (test)", "language": "python"}))
    km = KernelManager(kernel_name="dynexec-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in NOTEBOOK_CELLS])
    client = nbclient.NotebookClient(nb, km=km, timeout=120, allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    server_pids = []
    kernel_pid = None

    def text(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")

    try:
        with client.setup_kernel(env=dict(os.environ, DYNEXEC_ARCHIVE=str(tmp_path / "archive"))):
            kernel_pid = km.provisioner.pid if km.provisioner else None
            client.execute_cell(nb.cells[0], 0)
            server_pids = [int(p) for p in text(nb.cells[0]).split()[1:]]
            assert len(server_pids) == 2
            timer = threading.Timer(3.0, km.interrupt_kernel)  # while the cell waits on its job
            timer.start()
            try:
                client.execute_cell(nb.cells[1], 1)
            finally:
                timer.cancel()
            errors = [o for o in nb.cells[1].outputs if o.get("output_type") == "error"]
            assert errors and errors[0]["ename"] == "KeyboardInterrupt"
            assert all(alive(p) for p in server_pids)
            client.execute_cell(nb.cells[2], 2)
            assert text(nb.cells[2]).split() == ["after", *map(str, server_pids),
                                                 "results", str(2 ** 10 - 1)]
            client.execute_cell(nb.cells[3], 3)
            assert text(nb.cells[3]).split() == ["running", "True", "killed", "True"]
            client.execute_cell(nb.cells[4], 4)
            out = text(nb.cells[4])
            job_id = out.split("job ", 1)[1].strip()
            assert f"[{job_id}] hello from a job" in out, out
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        if kernel_pid:
            kill_pid(kernel_pid)
        for pid in server_pids:
            kill_pid(pid)
    assert wait_gone(server_pids) == []
