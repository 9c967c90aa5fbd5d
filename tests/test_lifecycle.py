"""The life of a job, with real compute-server processes: what runs once, what may run twice, cancel and
running(), kill and time limits, retries, and jobs that kill their servers."""
import os
import signal
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import dynexec

# -- jobs (module level: the servers import them by reference) ------------------------------------------------


def mark(directory, name, seconds=0.0):
    """Leaves a side effect (one line per run) in directory/name, then naps."""
    with open(Path(directory) / name, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return name


def wait_for(path, seconds):
    """Runs until `path` exists (or `seconds` pass): a job the test releases."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def segfault():
    import ctypes
    ctypes.string_at(0)


def hard_exit(code):
    os._exit(code)


def hog_memory(cgroup, cap_bytes):
    """Moves its own process into a memory cgroup capped at cap_bytes, then allocates until it is killed."""
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    chunks = []
    for _ in range(4 * cap_bytes // (16 << 20)):  # bounded: four times the cap, in 16 MiB pieces
        chunks.append(bytearray(16 << 20))
    return len(chunks)


def fail_until(path, failures):
    """Raises until it has been run `failures` times (counted in a file), then succeeds."""
    runs = len(Path(path).read_text().splitlines()) if Path(path).exists() else 0
    with open(path, "a") as f:
        f.write("run\n")
    if runs < failures:
        raise ValueError(f"run {runs + 1} fails")
    return runs + 1


def double(x):
    return 2 * x


def lines(path):
    return Path(path).read_text().splitlines() if Path(path).exists() else []


# -- dead servers are replaced; a job that kills servers fails ------------------------------------------------


@pytest.mark.parametrize("poison, how", [(segfault, "SIGSEGV"), (lambda: hard_exit(3), "exited with code 3")])
def test_a_job_that_kills_its_servers_fails_clearly_and_the_rest_goes_on(archive, poison, how):
    workers = os.cpu_count()
    with dynexec.Executor(archive=archive) as ex:  # the default number of servers
        bad = ex.submit(poison)
        good = [ex.submit(double, i) for i in range(40)]
        with pytest.raises(dynexec.ServerDiedError) as info:
            bad.result(timeout=60)
        message = str(info.value)
        assert bad.job_id in message and how in message and "max_attempts=3" in message, message
        assert [f.result(timeout=60) for f in good] == [2 * i for i in range(40)]
        record = dynexec.find(bad.job_id, archive)
        assert record.status == "lost" and record.attempts == 3
        assert all(dynexec.find(f.job_id, archive).attempts == 1 for f in good)  # none ran twice
        # Every dead server was replaced: the executor has as many as it started with.
        deadline = time.monotonic() + 30
        while len(ex.servers()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ex.servers()) == workers
        assert ex.submit(double, 21).result(timeout=30) == 42


def test_a_native_service_that_aborts_fails_clearly(archive, build_plugin):
    lib = build_plugin("abort", """
        #include <dynexec/service.hpp>
        #include <cstdlib>
        DYNEXEC_SERVICES(r) {
            r.add({"test.abort", "calls abort()", {}, [](const dynexec::Params&) -> dynexec::Value { std::abort(); }});
        }
    """)
    with dynexec.Executor(max_workers=2, archive=archive, max_attempts=2) as ex:
        dynexec.load_services(lib)
        bad = ex.submit_service("test.abort")
        good = [ex.submit(double, i) for i in range(10)]
        with pytest.raises(dynexec.ServerDiedError, match="SIGABRT"):
            bad.result(timeout=60)
        assert [f.result(timeout=60) for f in good] == [2 * i for i in range(10)]


def _memory_cgroup(tmp_path):
    """A memory cgroup (v1 or v2) below this process's own, or None if this machine does not allow one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            base, limit = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
            break
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base, limit = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
    else:
        return None, None
    group = base / f"dynexec-test-{os.getpid()}-{tmp_path.name}"
    try:
        group.mkdir()
        (group / limit).write_text(str(128 << 20))
    except OSError:
        if group.exists():
            group.rmdir()
        return None, None
    return group, limit


def test_a_job_killed_by_the_out_of_memory_killer_fails_clearly(archive, tmp_path):
    group, _ = _memory_cgroup(tmp_path)
    if group is None:
        pytest.skip("no memory cgroup can be made here (needs root and cgroups)")
    try:
        with dynexec.Executor(max_workers=2, archive=archive, max_attempts=2) as ex:
            bad = ex.submit(hog_memory, str(group), 128 << 20)
            good = [ex.submit(double, i) for i in range(10)]
            with pytest.raises(dynexec.ServerDiedError, match="SIGKILL"):
                bad.result(timeout=120)
            assert [f.result(timeout=60) for f in good] == [2 * i for i in range(10)]
    finally:
        for _ in range(50):  # its processes are gone once the executor has shut down; the kernel may lag
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_add_server_right_after_a_crash(archive):
    with dynexec.Executor(max_workers=2, archive=archive) as ex:
        victim = ex.servers()[0]
        os.kill(victim["pid"], signal.SIGKILL)
        new = ex.add_server()  # while the supervisor replaces the dead one
        assert new not in (victim["id"],)
        futures = [ex.submit(double, i) for i in range(50)]
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(50)]
        deadline = time.monotonic() + 30
        while len(ex.servers()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ex.servers()) == 3 and victim["id"] not in {s["id"] for s in ex.servers()}


def test_remove_server_ends_its_process_for_good(archive):
    with dynexec.Executor(max_workers=2, archive=archive) as ex:
        gone = ex.servers()[0]
        ex.remove_server(gone["id"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(gone["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"server process {gone['pid']} is still there")
        time.sleep(0.5)  # it is not replaced, nor back under a new ID
        assert [s["pid"] for s in ex.servers()] != [] and gone["pid"] not in [s["pid"] for s in ex.servers()]
        assert len(ex.servers()) == 1
        assert ex.submit(double, 2).result(timeout=30) == 4


def test_no_server_can_be_had_then_jobs_fail_as_with_a_broken_pool(archive):
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        ex._local._threads = "not-a-number"  # every server started from now on exits at once (a broken environment)
        blocker = ex.submit(time.sleep, 30)
        queued = [ex.submit(double, i) for i in range(5)]
        time.sleep(0.3)
        os.kill(ex.servers()[0]["pid"], signal.SIGKILL)
        with pytest.raises(dynexec.BrokenExecutorError, match="none could be started"):
            queued[0].result(timeout=60)
        for f in [blocker] + queued:
            with pytest.raises((dynexec.BrokenExecutorError, dynexec.ServerLostError)):
                f.result(timeout=10)
        with pytest.raises(dynexec.BrokenExecutorError):
            ex.submit(double, 1)


# -- cancel() and running() follow concurrent.futures --------------------------------------------------------


def test_cancel_and_running_tell_the_truth_for_a_job_queued_on_a_busy_server(archive, tmp_path):
    release = tmp_path / "release"
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        busy = ex.submit(wait_for, release, 30)
        queued = ex.submit(mark, tmp_path, "queued")   # held by the server, behind `busy`
        waiting = ex.submit(mark, tmp_path, "waiting")  # in the load balancer
        deadline = time.monotonic() + 10
        while not busy.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy.running() and not queued.running() and not waiting.running()
        assert busy.cancel() is False  # it has started
        assert queued.cancel() is True and waiting.cancel() is True
        assert queued.cancelled() and waiting.cancelled()
        release.touch()
        assert busy.result(timeout=30) > 0
        assert not busy.running()
        after = ex.submit(mark, tmp_path, "after")
        assert after.result(timeout=30) == "after"
        with pytest.raises(CancelledError):
            queued.result()
    assert lines(tmp_path / "queued") == [] and lines(tmp_path / "waiting") == []  # they never ran
    assert dynexec.find(queued.job_id, archive).status == "cancelled"
    assert dynexec.find(busy.job_id, archive).status == "ok"


def test_with_work_stealing_no_job_runs_twice(archive, tmp_path):
    with dynexec.Executor(max_workers=2, archive=archive, policy="round_robin") as ex:
        warm = [ex.submit(mark, tmp_path, f"w{i}") for i in range(200)]  # tiny jobs: servers take deep queues
        [f.result(timeout=60) for f in warm]
        futures = []
        for r in range(10):  # a long job with short ones queued behind it: the other server steals them
            futures.append(ex.submit(mark, tmp_path, f"long{r}", 0.05))
            futures += [ex.submit(mark, tmp_path, f"r{r}-{i}") for i in range(20)]
            if r == 5:
                ex.add_server()  # a newcomer steals too
            [f.result(timeout=60) for f in futures]
        stats = ex.stats()
    futures += warm
    ran = {f.result(): len(lines(tmp_path / f.result())) for f in futures}
    assert set(ran.values()) == {1}, {k: v for k, v in ran.items() if v != 1}
    assert {dynexec.find(f.job_id, archive).attempts for f in futures} == {1}
    assert stats["stolen"] >= 5, stats  # stealing did happen


# -- kill() and time limits --------------------------------------------------------------------------------------


def test_a_time_limit_stops_a_job_that_would_run_for_a_minute(archive):
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        t0 = time.monotonic()
        f = ex.options(time_limit=0.5).submit(time.sleep, 60)
        after = ex.submit(double, 4)  # queued behind it: runs on the server that replaces the stopped one
        with pytest.raises(dynexec.JobTimeoutError, match="time limit of 0.5 s"):
            f.result(timeout=30)
        assert after.result(timeout=30) == 8
        assert time.monotonic() - t0 < 20
        assert dynexec.find(f.job_id, archive).status == "timeout"
        assert dynexec.find(after.job_id, archive).attempts == 1
        n = ex.options(time_limit=0.5).submit_service("spin.cpu", seconds=60)  # a native service is asked to stop
        with pytest.raises(dynexec.JobTimeoutError):
            n.result(timeout=30)
        assert dynexec.find(n.job_id, archive).status == "timeout"


def test_kill_stops_a_running_job_and_the_executor_goes_on(archive, tmp_path):
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        f = ex.submit(wait_for, tmp_path / "never", 60)
        deadline = time.monotonic() + 10
        while not f.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert f.kill() is True
        with pytest.raises(dynexec.JobKilledError):
            f.result(timeout=30)
        assert f.kill() is False  # finished
        assert dynexec.find(f.job_id, archive).status == "killed"
        assert ex.submit(double, 5).result(timeout=30) == 10


def test_options_are_checked_and_do_not_collide_with_the_callables_keywords(archive, tmp_path):
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        with pytest.raises(ValueError, match="time_limit"):
            ex.options(time_limit=-1)
        with pytest.raises(ValueError, match="retries"):
            ex.options(retries=1.5)
        # `timeout` and `retries` of the callable stay the callable's
        assert ex.options(retries=1).submit(dict, timeout=3, retries=4).result(timeout=30) == {"timeout": 3,
                                                                                              "retries": 4}
        assert list(ex.options(time_limit=30).map(double, range(5))) == [0, 2, 4, 6, 8]


def test_retries_run_a_failing_job_again(archive, tmp_path):
    counter = tmp_path / "runs"
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        f = ex.options(retries=2).submit(fail_until, counter, 2)
        assert f.result(timeout=30) == 3
        assert dynexec.find(f.job_id, archive).attempts == 3  # three starts, one result
        with pytest.raises(ValueError, match="run 1 fails"):
            ex.submit(fail_until, tmp_path / "other", 1).result(timeout=30)  # no retries by default
    assert len(lines(counter)) == 3


def test_shutdown_cancels_a_backlog_before_servers_can_take_it(archive):
    # Cancelling one job after another let each freed server slot take the next job about to be cancelled
    # (then cancelled only after a round trip to that server): thousands ran. Now the waiting ones go first.
    ex = dynexec.Executor(max_workers=2, archive=False)
    futures = [ex.submit(time.sleep, 0.01) for _ in range(20_000)]
    ex.shutdown(wait=True, cancel_futures=True)
    ran = sum(not f.cancelled() for f in futures)
    assert ran < 200, f"{ran} of {len(futures)} jobs ran although shutdown cancelled them"


def test_a_forked_child_does_not_take_its_parents_executors_along(archive):
    """multiprocessing's fork (ProcessPoolExecutor's workers) copies this process without the engines' threads:
    at its exit the child must leave its parent's executors alone (shutting one down there would wait for
    threads that do not exist)."""
    from dynexec import executor as module
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        assert ex.submit(abs, -1).result(timeout=30) == 1
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 only if it holds no executor to shut down
            os._exit(0 if not module._live_executors and not module._collectors else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ex in module._live_executors  # the parent's are untouched
