"""The concurrent.futures semantics CPython checks for its own executors (Lib/test/test_concurrent_futures.py,
3.11: ExecutorTest, WaitTests, AsCompletedTests, FutureTests, ShutdownTest), adapted to dynexec.Executor.

Jobs that must stay busy wait on a Gate instead of sleeping: compute servers run in this process, so a job
reaches the test's Gate by its name. A gate opens when its `with` block ends, before the executor shuts down,
and a held job gives up after HOLD seconds, so a failing test cannot hang.
"""
import concurrent.futures as cf
import gc
import itertools
import logging
import threading
import time
import weakref

import pytest

import dynexec
from dynexec.errors import _RemoteTraceback

T = 10  # bound on every wait that should succeed
HOLD = 10  # longest a held job waits for its gate


# -- jobs -----------------------------------------------------------------------------------------------------------
def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_and_raise(t):
    time.sleep(t)
    raise Exception("this is an exception")


def raise_runtime():
    raise RuntimeError(123)  # some comment


class MyError(Exception):
    pass


def raise_my_error(*args):
    raise MyError(*args)


class NeedsTwoArgs(Exception):  # pickles, but cannot be rebuilt from its args
    def __init__(self, a, b):
        super().__init__(a)


def raise_needs_two_args():
    raise NeedsTwoArgs("a", "b")


def _cannot_rebuild():
    raise ValueError("cannot rebuild this result")


class Unloadable:  # pickles on the server, fails to unpickle when the result arrives
    def __reduce__(self):
        return _cannot_rebuild, ()


def return_unloadable():
    return Unloadable()


def return_lock():
    return threading.Lock()


def exit_job():
    raise SystemExit(3)


def big_bytes(n):
    return bytes(range(256)) * (n // 256)


def return_none():
    pass


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


# -- gates ----------------------------------------------------------------------------------------------------------
_GATES: dict[str, "Gate"] = {}
_gate_ids = itertools.count()


class Gate:
    """Holds the jobs that pass `pause` its name until the test opens it."""

    def __init__(self):
        self.name = f"gate-{next(_gate_ids)}"
        self.entered = 0
        self._opened = threading.Event()
        self._cond = threading.Condition()
        _GATES[self.name] = self

    def hold(self):  # runs in a job
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        self._opened.wait(HOLD)

    def wait_entered(self, n=1):
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= n, T), f"{n} held jobs never started"

    def open(self):
        self._opened.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.open()


def pause(gate_name, value=None):
    """A job: waits at gate `gate_name` (if any), then returns value."""
    if gate_name:
        _GATES[gate_name].hold()
    return value


# -- futures in each state, not from an executor (as CPython's tests make them) ------------------------------------
def assert_freed(ref):
    """The object behind `ref` goes away: at once, or as soon as the results thread has moved on from it."""
    deadline = time.monotonic() + T / 2
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert ref() is None, f"{ref()!r} is still referenced"


def pending_future():
    return cf.Future()


def running_future():
    f = cf.Future()
    f.set_running_or_notify_cancel()
    return f


def cancelled_future():
    f = cf.Future()
    f.cancel()
    return f


def cancelled_and_notified_future():
    f = cancelled_future()
    f.set_running_or_notify_cancel()
    return f


def exception_future():
    f = cf.Future()
    f.set_exception(OSError())
    return f


def successful_future():
    f = cf.Future()
    f.set_result(42)
    return f


@pytest.fixture
def ex(archive):
    with dynexec.Executor(max_workers=2, processes=False, archive=archive) as executor:
        yield executor


# -- ExecutorTest ---------------------------------------------------------------------------------------------------
def test_submit(ex):
    future = ex.submit(pow, 2, 8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=T) == 256
    assert future.done() and not future.running() and not future.cancelled()
    assert future.exception(timeout=T) is None


def test_submit_keyword(ex):
    assert ex.submit(mul, 2, y=8).result(timeout=T) == 16
    # fn is positional-only: 'fn' and 'self' go to the job as keywords
    assert ex.submit(capture, 1, self=2, fn=3).result(timeout=T) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        ex.submit(arg=1)
    with pytest.raises(TypeError):
        ex.submit()


def test_map(ex):
    assert list(ex.map(pow, range(10), range(10), timeout=T)) == list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10), chunksize=3, timeout=T)) == list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, [], timeout=T)) == []


def test_map_chunksize(ex):
    ref = list(map(pow, range(40), range(40)))
    for chunksize in (6, 40, 50):
        assert list(ex.map(pow, range(40), range(40), chunksize=chunksize, timeout=T)) == ref
    for chunksize in (0, -1):
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            list(ex.map(pow, range(40), range(40), chunksize=chunksize))


def test_map_stops_at_the_shortest_iterable(ex):
    assert list(ex.map(mul, range(10), range(3), timeout=T)) == [0, 1, 4]
    assert list(ex.map(mul, range(3), range(10), chunksize=2, timeout=T)) == [0, 1, 4]
    assert list(ex.map(mul, range(3), [], timeout=T)) == []


def test_map_submits_every_job_before_iteration(archive):
    gate = Gate()
    gate.open()
    with dynexec.Executor(max_workers=2, processes=False, archive=archive) as executor:
        results = executor.map(pause, [gate.name] * 5, range(5))
        gate.wait_entered(5)  # all ran, none asked for yet
    assert list(results) == list(range(5))


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_exception(ex, chunksize):
    i = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], timeout=T, chunksize=chunksize)
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError) as info:
        next(i)
    assert isinstance(info.value.__cause__, _RemoteTraceback)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_timeout(ex, chunksize):
    results = []
    with Gate() as gate:
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            for r in ex.map(pause, [None, None, gate.name], ["a", "b", "c"], timeout=1.0, chunksize=chunksize):
                results.append(r)
        assert time.monotonic() - t0 >= 0.9
        assert gate.entered == 1  # the slow item is running, not finished
    assert results == ["a", "b"]


def test_shutdown_race_issue12456(ex):
    ex.map(str, [2] * 3)
    ex.shutdown()


def test_no_stale_references(ex):
    # Issue #16284: the executor holds no reference to what a job was sent.
    my_object = MyObject()
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda obj: collected.set())  # noqa: F841
    ex.submit(my_object.my_method)  # deliberately discarding the future
    del my_object
    gc.collect()
    assert collected.wait(T), "stale reference not collected"


def test_free_reference(ex):
    # Issue #14406: the map iterator keeps no reference to results it has yielded.
    for obj in ex.map(make_dummy_object, range(10), timeout=T):
        wr = weakref.ref(obj)
        del obj
        assert_freed(wr)


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_negative(archive, number):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        dynexec.Executor(max_workers=number, archive=archive)


def test_job_returning_none(ex):
    f = ex.submit(return_none)
    assert f.result(timeout=T) is None
    assert f.exception(timeout=T) is None


def test_job_returning_a_large_object(ex):
    n = 10 * 1024 * 1024
    value = ex.submit(big_bytes, n).result(timeout=T)
    assert type(value) is bytes and len(value) == n and value == big_bytes(n)


# -- exceptions -----------------------------------------------------------------------------------------------------
def test_traceback(ex):
    # The exception comes back with its own type and args; the remote traceback is its cause.
    future = ex.submit(raise_runtime)
    with pytest.raises(RuntimeError) as info:
        future.result(timeout=T)
    exc = info.value
    assert type(exc) is RuntimeError and exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is _RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in cause.tb
    assert "raise RuntimeError(123)  # some comment" in str(cause)
    assert type(future.exception(timeout=T)) is RuntimeError


def test_exception_of_a_class_defined_by_the_user(ex):
    f = ex.submit(raise_my_error, "x", 1)
    exc = f.exception(timeout=T)
    assert type(exc) is MyError and exc.args == ("x", 1)
    assert "raise MyError(*args)" in str(exc.__cause__)


def test_a_failing_job_does_not_break_the_executor(ex):
    with pytest.raises(Exception, match="this is an exception"):
        ex.submit(sleep_and_raise, 0).result(timeout=T)
    with pytest.raises(SystemExit):  # a BaseException is the job's result too, as in ProcessPoolExecutor
        ex.submit(exit_job).result(timeout=T)
    with pytest.raises(TypeError, match="pickle"):  # the result cannot travel
        ex.submit(return_lock).result(timeout=T)
    with pytest.raises(ValueError, match="cannot rebuild this result"):  # nor be rebuilt on arrival
        ex.submit(return_unloadable).result(timeout=T)
    with pytest.raises(dynexec.RemoteError, match="NeedsTwoArgs") as info:  # an exception that cannot be rebuilt
        ex.submit(raise_needs_two_args).result(timeout=T)
    assert info.value.type_name.endswith("NeedsTwoArgs") and "raise NeedsTwoArgs" in info.value.traceback
    with pytest.raises(dynexec.InvalidJobError):  # an argument that cannot be sent fails at once
        ex.submit(capture, threading.Lock())
    assert ex.submit(pow, 2, 5).result(timeout=T) == 32
    assert list(ex.map(mul, range(20), range(20), timeout=T)) == [i * i for i in range(20)]


# -- WaitTests ------------------------------------------------------------------------------------------------------
def test_wait_20369(ex):
    # The same future twice.
    future = ex.submit(time.sleep, 0.2)
    done, not_done = cf.wait([future, future], timeout=T, return_when=cf.ALL_COMPLETED)
    assert done == {future} and not_done == set()


def test_wait_first_completed(ex):
    cancelled = cancelled_future()
    with Gate() as gate:
        future1 = ex.submit(mul, 21, 2)
        future2 = ex.submit(pause, gate.name)
        done, not_done = cf.wait([cancelled, future1, future2], timeout=T, return_when=cf.FIRST_COMPLETED)
        assert done == {future1} and not_done == {cancelled, future2}


def test_wait_first_completed_some_already_completed(ex):
    cn, ok = cancelled_and_notified_future(), successful_future()
    with Gate() as gate:
        future1 = ex.submit(pause, gate.name)
        t0 = time.monotonic()
        finished, pending = cf.wait([cn, ok, future1], timeout=T, return_when=cf.FIRST_COMPLETED)
        assert time.monotonic() - t0 < T / 2
        assert finished == {cn, ok} and pending == {future1}


def test_wait_first_exception(ex):
    with Gate() as gate:
        future1 = ex.submit(mul, 2, 21)
        assert future1.result(timeout=T) == 42
        future2 = ex.submit(sleep_and_raise, 0.2)
        future3 = ex.submit(pause, gate.name)
        finished, pending = cf.wait([future1, future2, future3], timeout=T, return_when=cf.FIRST_EXCEPTION)
        assert finished == {future1, future2} and pending == {future3}


def test_wait_first_exception_some_already_complete(ex):
    ok, cancelled, cn = successful_future(), cancelled_future(), cancelled_and_notified_future()
    with Gate() as gate:
        future1 = ex.submit(divmod, 21, 0)
        future2 = ex.submit(pause, gate.name)
        finished, pending = cf.wait([ok, cancelled, cn, future1, future2], timeout=T, return_when=cf.FIRST_EXCEPTION)
        assert finished == {ok, cn, future1} and pending == {cancelled, future2}


def test_wait_first_exception_one_already_failed(ex):
    failed = exception_future()
    with Gate() as gate:
        future1 = ex.submit(pause, gate.name)
        finished, pending = cf.wait([failed, future1], timeout=T, return_when=cf.FIRST_EXCEPTION)
        assert finished == {failed} and pending == {future1}


def test_wait_all_completed(ex):
    others = [successful_future(), cancelled_and_notified_future(), exception_future()]
    future1 = ex.submit(divmod, 2, 0)
    future2 = ex.submit(mul, 2, 21)
    finished, pending = cf.wait(others + [future1, future2], timeout=T, return_when=cf.ALL_COMPLETED)
    assert finished == set(others + [future1, future2]) and pending == set()


def test_wait_timeout(ex):
    others = [cancelled_and_notified_future(), exception_future(), successful_future()]
    with Gate() as gate:
        future1 = ex.submit(mul, 6, 7)
        future2 = ex.submit(pause, gate.name)
        t0 = time.monotonic()
        finished, pending = cf.wait(others + [future1, future2], timeout=1.0, return_when=cf.ALL_COMPLETED)
        assert time.monotonic() - t0 >= 0.9
        assert finished == set(others + [future1]) and pending == {future2}


# -- AsCompletedTests -----------------------------------------------------------------------------------------------
def test_as_completed_no_timeout(ex):
    others = [cancelled_and_notified_future(), exception_future(), successful_future()]
    future1 = ex.submit(mul, 2, 21)
    future2 = ex.submit(mul, 7, 6)
    completed = list(cf.as_completed(others + [future1, future2], timeout=T))
    assert len(completed) == 5 and set(completed) == set(others + [future1, future2])
    assert {future1.result(), future2.result()} == {42}


def test_as_completed_zero_timeout(ex):
    others = [cancelled_and_notified_future(), exception_future(), successful_future()]
    completed = set()
    with Gate() as gate:
        future1 = ex.submit(pause, gate.name)
        with pytest.raises(cf.TimeoutError):
            for future in cf.as_completed(others + [future1], timeout=0):
                completed.add(future)
    assert completed == set(others)


def test_as_completed_timeout_with_a_slow_job(ex):
    with Gate() as gate:
        quick = ex.submit(mul, 3, 3)
        assert quick.result(timeout=T) == 9
        slow = ex.submit(pause, gate.name)
        completed = []
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError, match=r"1 \(of 2\) futures unfinished"):
            for future in cf.as_completed([slow, quick], timeout=0.5):
                completed.append(future)
        assert time.monotonic() - t0 >= 0.4
        assert completed == [quick]
    assert slow.result(timeout=T) is None


def test_as_completed_duplicate_futures(ex):
    # Issue 20367: duplicates are yielded once.
    future1 = ex.submit(time.sleep, 0.2)
    assert list(cf.as_completed(itertools.repeat(future1, 3), timeout=T)) == [future1]
    ok = successful_future()
    completed = list(cf.as_completed([future1, ok, future1, ok], timeout=T))
    assert len(completed) == 2 and set(completed) == {future1, ok}


def test_as_completed_free_reference_yielded_future(ex):
    # Issue #14406: as_completed keeps no reference to futures it has yielded.
    futures_list = [ex.submit(mul, i, 1) for i in range(8)]
    refs = [weakref.ref(f) for f in futures_list]
    n = 0
    for future in cf.as_completed(futures_list, timeout=T):
        futures_list.remove(future)
        wr = weakref.ref(future)
        del future
        assert_freed(wr)
        n += 1
    assert n == 8
    for r in refs:
        assert_freed(r)


def test_as_completed_correct_timeout_exception_msg(ex):
    with Gate() as gate:
        held = ex.submit(pause, gate.name)
        futures = [pending_future(), running_future(), cancelled_future(), cancelled_and_notified_future(),
                   successful_future(), held]
        with pytest.raises(cf.TimeoutError) as info:
            list(cf.as_completed(futures, timeout=0))
        assert str(info.value) == "4 (of 6) futures unfinished"  # a cancelled, un-notified future counts


# -- FutureTests, as they apply to executor futures ----------------------------------------------------------------
def test_future_repr_and_job_id(ex):
    with Gate() as gate:
        f = ex.submit(pause, gate.name)
        assert f.job_id and f"job_id={f.job_id}" in repr(f) and "state=finished" not in repr(f)
    f.result(timeout=T)
    assert "state=finished returned NoneType" in repr(f)


def test_result_and_exception_with_timeout(ex):
    with Gate() as gate:
        f = ex.submit(pause, gate.name, "late")
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0)
        with pytest.raises(cf.TimeoutError):
            f.exception(timeout=0.1)
        assert not f.done()
    assert f.result(timeout=T) == "late"


def test_many_threads_waiting_on_results_while_a_map_runs(ex):
    """result() takes its own job's result from the engine when it can, the collector settles the rest: every
    future settles once, with its own value, whichever of them gets there."""
    def one_thread(k, out):
        out[k] = [ex.submit(mul, k, y=i).result(timeout=T) for i in range(200)]

    out = {}
    threads = [threading.Thread(target=one_thread, args=(k, out)) for k in range(4)]
    for t in threads:
        t.start()
    mapped = list(ex.map(mul, range(2000), [3] * 2000))
    for t in threads:
        t.join(T)
    assert mapped == [3 * i for i in range(2000)]
    assert out == {k: [k * i for i in range(200)] for k in range(4)}


def test_a_result_that_timed_out_is_still_settled_by_the_collector(ex):
    with Gate() as gate:
        f = ex.submit(pause, gate.name, "late")
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0.05)
        settled = threading.Event()
        f.add_done_callback(lambda _: settled.set())
    assert settled.wait(T)  # nobody waits in result(): the collector took it
    assert f.result(timeout=0) == "late"


def test_cancel_pending_job(archive):
    calls = []
    with dynexec.Executor(max_workers=1, processes=False, archive=archive) as executor, Gate() as gate:
        blocker = executor.submit(pause, gate.name, "blocker")  # keeps the only server busy
        gate.wait_entered(1)
        second = executor.submit(pause, gate.name, "second")
        second.add_done_callback(calls.append)
        assert second.cancel() is True
        assert second.cancel() is True  # again: still cancelled
        assert second.cancelled() and second.done() and not second.running()
        with pytest.raises(cf.CancelledError):
            second.result(timeout=T)
        with pytest.raises(cf.CancelledError):
            second.exception(timeout=T)
        done, not_done = cf.wait([second], timeout=T)  # once the engine confirms, waiters are notified
        assert done == {second} and not_done == set()
        assert list(cf.as_completed([second], timeout=T)) == [second]
        late = []
        second.add_done_callback(late.append)  # added after cancel: called at once
        assert late == [second]
        assert not blocker.done()
    assert blocker.result(timeout=T) == "blocker"
    assert gate.entered == 1  # the cancelled job never ran
    assert calls == [second]  # exactly once, although both cancel() and the engine report it


def test_cancel_running_job(ex):
    with Gate() as gate:
        f = ex.submit(pause, gate.name, "ran")
        gate.wait_entered(1)
        assert f.cancel() is False
        assert f.running() and not f.cancelled() and not f.done()
    assert f.result(timeout=T) == "ran"
    assert not f.running() and f.done() and f.cancel() is False


def test_cancel_finished_job(ex):
    f = ex.submit(mul, 2, 3)
    assert f.result(timeout=T) == 6
    assert f.cancel() is False and not f.cancelled()


def test_done_callbacks(ex):
    calls = []
    lock = threading.Lock()

    def record(tag):
        def fn(future):
            with lock:
                calls.append((tag, future))
        return fn

    ok = ex.submit(mul, 6, 7)
    ok.add_done_callback(record("ok"))
    failed = ex.submit(raise_my_error, "cb")
    failed.add_done_callback(record("failed"))
    assert ok.result(timeout=T) == 42
    assert isinstance(failed.exception(timeout=T), MyError)
    after = []
    ok.add_done_callback(after.append)  # already done: called at once, in this thread
    failed.add_done_callback(after.append)
    assert after == [ok, failed]
    ex.shutdown(wait=True)  # the callbacks added before completion have run by now
    assert sorted(calls, key=lambda c: c[0]) == [("failed", failed), ("ok", ok)]


def test_done_callback_raises(ex, caplog):
    seen = []

    def raising(future):
        raise ValueError("callback failed")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f = ex.submit(mul, 1, 5)
        f.add_done_callback(raising)
        f.add_done_callback(seen.append)
        assert f.result(timeout=T) == 5
        assert ex.submit(mul, 2, 5).result(timeout=T) == 10  # the executor is unharmed
        ex.shutdown(wait=True)
    assert seen == [f]
    assert "callback failed" in caplog.text


# -- ShutdownTest ---------------------------------------------------------------------------------------------------
def test_run_after_shutdown(ex):
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 5)
    with pytest.raises(RuntimeError):
        ex.map(pow, [2], [5])
    ex.shutdown()  # again: nothing to do


def test_context_manager(archive):
    with dynexec.Executor(max_workers=2, processes=False, archive=archive) as executor:
        assert isinstance(executor, dynexec.Executor)
        fs = [executor.submit(time.sleep, 0.05) for _ in range(4)]
    assert all(f.done() for f in fs)
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 5)


def test_shutdown_waits_for_all_issue12364(archive):
    executor = dynexec.Executor(max_workers=2, processes=False, archive=archive)
    fs = [executor.submit(time.sleep, 0.01) for _ in range(50)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in fs)
    for f in fs:
        assert f.result(timeout=0) is None


def test_shutdown_no_wait(archive):
    executor = dynexec.Executor(max_workers=2, processes=False, archive=archive)
    res = executor.map(abs, range(-5, 5), timeout=T)
    with Gate() as gate:
        held = executor.submit(pause, gate.name, "held")
        t0 = time.monotonic()
        executor.shutdown(wait=False)
        assert time.monotonic() - t0 < 1.0  # does not wait for the held job
        with pytest.raises(RuntimeError):
            executor.submit(pow, 2, 5)
        assert not held.done()
    assert list(res) == [abs(v) for v in range(-5, 5)]
    assert held.result(timeout=T) == "held"  # futures still complete
    executor.shutdown(wait=True)


def test_dropped_executor_is_shut_down(archive):
    # Like ThreadPoolExecutor's test_del_shutdown: an executor dropped without shutdown() is collected and
    # closes its engine once its jobs are done.
    executor = dynexec.Executor(max_workers=2, processes=False, archive=archive)
    res = executor.map(abs, range(-5, 5), timeout=T)
    collector = executor._collector
    wr = weakref.ref(executor)
    del executor
    gc.collect()
    assert wr() is None
    collector.join(T)
    assert not collector.is_alive()
    assert list(res) == [abs(v) for v in range(-5, 5)]


def test_cancel_futures(archive):
    executor = dynexec.Executor(max_workers=2, processes=False, archive=archive)
    fs = [executor.submit(time.sleep, 0.1) for _ in range(50)]
    executor.shutdown(cancel_futures=True)
    # Which ones started is a matter of timing, but with 2 servers most must have been cancelled ...
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    # ... and every other one finished: none is left pending.
    for f in fs:
        assert f.done(), f
        if not f.cancelled():
            assert f.exception(timeout=0) is None


def test_cancel_futures_cancels_exactly_the_queued_jobs(archive):
    executor = dynexec.Executor(max_workers=2, processes=False, archive=archive)
    with Gate() as gate:
        running = [executor.submit(pause, gate.name, i) for i in range(2)]
        gate.wait_entered(2)  # both servers busy: everything after this is queued
        queued = [executor.submit(pause, gate.name, i) for i in range(2, 20)]
        threading.Timer(0.3, gate.open).start()
        executor.shutdown(wait=True, cancel_futures=True)
    assert [f.result(timeout=0) for f in running] == [0, 1]
    assert all(f.cancelled() for f in queued)
    assert gate.entered == 2
    done, not_done = cf.wait(running + queued, timeout=T)
    assert not_done == set()


def test_cancel_futures_wait_false(archive):
    executor = dynexec.Executor(max_workers=2, processes=False, archive=archive)
    with Gate() as gate:
        running = [executor.submit(pause, gate.name, i) for i in range(2)]
        gate.wait_entered(2)
        queued = [executor.submit(pause, gate.name, i) for i in range(2, 20)]
        t0 = time.monotonic()
        executor.shutdown(wait=False, cancel_futures=True)
        assert time.monotonic() - t0 < 1.0
        # As in concurrent.futures, queued futures are cancelled by the time shutdown() returns.
        assert all(f.cancelled() for f in queued)
        assert not any(f.done() for f in running)
        done, not_done = cf.wait(queued, timeout=T)  # and waiters hear of it
        assert not_done == set()
    assert [f.result(timeout=T) for f in running] == [0, 1]
    executor.shutdown(wait=True)
    assert gate.entered == 2


def test_cancel_futures_after_shutdown_without_wait(archive):
    executor = dynexec.Executor(max_workers=1, processes=False, archive=archive)
    with Gate() as gate:
        running = executor.submit(pause, gate.name, "ran")
        gate.wait_entered(1)
        queued = executor.submit(pause, gate.name, "queued")
        executor.shutdown(wait=False)
        t0 = time.monotonic()
        executor.shutdown(wait=False, cancel_futures=True)  # a second call may still cancel what is queued
        assert time.monotonic() - t0 < 1.0
        assert queued.cancelled()
    assert running.result(timeout=T) == "ran"
    executor.shutdown(wait=True)


def test_interpreter_shutdown(archive, run_python):
    # Jobs still run when the interpreter exits without shutdown(), also those of a dropped executor;
    # submitting from an atexit handler is refused.
    out = run_python(f"""
        import atexit, time
        import dynexec

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg, flush=True)

        def submit_late():
            try:
                ex.submit(print, "late job ran")
            except RuntimeError as e:
                print("late:", e, flush=True)

        def drop():
            dynexec.Executor(max_workers=1, processes=False, archive={str(archive)!r}).submit(sleep_and_print, 0.3, "pear")

        ex = dynexec.Executor(max_workers=2, processes=False, archive={str(archive)!r})
        atexit.register(submit_late)
        ex.submit(sleep_and_print, 0.3, "apple")
        drop()
    """, timeout=T * 3)
    assert "apple" in out and "pear" in out
    assert "late: cannot schedule new futures" in out and "late job ran" not in out


def test_engine_dropped_on_a_new_thread(archive, run_python):
    # A future (which holds the engine) or an executor may be dropped on any thread, also after shutdown().
    run_python(f"""
        import threading
        import dynexec

        engines = []
        for i in range(20):
            ex = dynexec.Executor(max_workers=1, processes=False, archive={str(archive)!r})
            ex.submit(pow, 2, 3).result(timeout=10)
            ex.shutdown()
            engines.append([ex._engine])
            del ex
        for box in engines:  # each engine's last reference goes on a thread started after its writer ended
            t = threading.Thread(target=box.clear)
            t.start()
            t.join()
    """, timeout=T * 3)
