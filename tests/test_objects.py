"""Large objects go to each compute server once (dynexec.objects): ex.scatter handles, and large arguments and
globals without asking; jobs see them as they were at submit, and servers drop them when no job needs them."""
import os
import time

import numpy as np
import pytest

import dynexec
from dynexec import objects
from test_cluster import start  # noqa: F401 (a fixture)

MB = 1 << 20
BIG = np.arange(6 * MB // 8, dtype=np.float64)  # a global of __main__-like test code, captured by value


def pid_and_first(a, i=0):
    return os.getpid(), float(a[i])


def pid_and_id(a):
    return os.getpid(), id(a), a.flags.writeable, float(a[-1])


def by_value():
    """A function pickled by value (a local one, as of __main__ or a notebook): it carries the BIG it names."""
    def uses_global(i):
        return os.getpid(), float(BIG[i])
    return uses_global


def set_first(a):
    a[0] = -1.0  # a job may change its own copy
    return float(a.sum())


@pytest.fixture
def ex():
    with dynexec.Executor(max_workers=2, archive=False) as e:
        yield e


def test_a_scattered_array_goes_to_each_server_once_and_is_shared_by_its_jobs_there(ex):
    h = ex.scatter(BIG)
    assert h.nbytes > 6 * MB and len(h.key) == 32
    out = [f.result(timeout=60) for f in [ex.submit(pid_and_id, h) for _ in range(20)]]
    assert {o[3] for o in out} == {float(BIG[-1])}
    assert not any(o[2] for o in out), "a shared array is read-only on the servers"
    per_server = {}
    for pid, ident, _, _ in out:
        per_server.setdefault(pid, set()).add(ident)
    assert all(len(ids) == 1 for ids in per_server.values()), "unpickled once per server process"
    stats = ex.stats()
    assert 1 <= stats["objects_sent"] <= 2, stats  # one per server, not one per job
    assert stats["objects_held"] == 1
    h.release()
    assert ex.stats()["objects_held"] == 0


def test_a_large_argument_travels_once_per_server_and_each_job_gets_its_own_copy(ex):
    arr = np.ones(2 * MB // 8)
    out = [f.result(timeout=60) for f in [ex.submit(set_first, arr) for _ in range(10)]]
    assert out == [float(arr.size) - 2.0] * 10, "each job changed a fresh copy, not one shared by the others"
    assert arr[0] == 1.0
    assert 1 <= ex.stats()["objects_sent"] <= 2


def test_an_array_changed_after_submit_reaches_the_job_as_it_was_then(ex):
    arr = np.zeros(2 * MB // 8)
    first = ex.submit(pid_and_first, arr)
    arr[0] = 7.0  # a new content: a new object
    second = ex.submit(pid_and_first, arr)
    assert first.result(timeout=60)[1] == 0.0
    assert second.result(timeout=60)[1] == 7.0


def test_a_large_global_of_a_function_travels_once_per_server(ex):
    uses_global = by_value()
    out = [f.result(timeout=60) for f in [ex.submit(uses_global, i) for i in range(20)]]
    assert [o[1] for o in out] == [float(i) for i in range(20)]
    assert 1 <= ex.stats()["objects_sent"] <= 2
    assert list(ex.map(uses_global, range(5))) and ex.stats()["objects_sent"] <= 2


def test_large_bytes_travel_once_and_small_arguments_as_before(ex):
    data = bytes(range(256)) * (MB // 64)
    assert [f.result(timeout=60) for f in [ex.submit(len, data) for _ in range(6)]] == [len(data)] * 6
    assert ex.submit(len, b"small").result(timeout=60) == 5
    assert 1 <= ex.stats()["objects_sent"] <= 2


def test_automatic_objects_are_let_go_after_their_last_job(ex, monkeypatch):
    monkeypatch.setattr(objects, "GRACE", 0.0)
    arr = np.ones(2 * MB // 8)
    assert ex.submit(float, arr.sum()).result(timeout=60) == arr.size  # no object: a scalar
    assert ex.submit(set_first, arr).result(timeout=60) == arr.size - 2.0
    deadline = time.monotonic() + 10
    while ex.stats()["objects_held"] and time.monotonic() < deadline:
        ex._objects.sweep()
        time.sleep(0.05)
    assert ex.stats()["objects_held"] == 0


def test_a_handle_of_another_executor_or_a_released_one_is_refused_by_name(ex):
    with dynexec.Executor(max_workers=1, archive=False) as other:
        foreign = other.scatter([1, 2, 3])
        with pytest.raises(dynexec.InvalidJobError, match="another executor"):
            ex.submit(len, foreign)
    h = ex.scatter({"a": 1})
    assert ex.submit(len, h).result(timeout=60) == 1
    h.release()
    with pytest.raises(dynexec.InvalidJobError, match="released"):
        ex.submit(len, h)


def test_in_process_servers_get_the_objects_too():
    with dynexec.Executor(max_workers=1, processes=False, archive=False) as ex:
        h = ex.scatter(BIG)
        assert ex.submit(pid_and_first, h, 5).result(timeout=60) == (os.getpid(), 5.0)
        assert ex.submit(by_value(), 3).result(timeout=60)[1] == 3.0


def test_a_cluster_client_sends_each_object_to_the_head_once_and_its_servers_get_it(start):
    c = start.cluster(3)  # a head and two compute servers
    with dynexec.Executor(connect=c.conn) as ex:
        h = ex.scatter(BIG)
        arr = np.full(2 * MB // 8, 3.0)
        fs = [ex.submit(pid_and_first, h, i) for i in range(10)] + [ex.submit(set_first, arr) for _ in range(10)]
        out = [f.result(timeout=120) for f in fs]
        assert [o[1] for o in out[:10]] == [float(i) for i in range(10)]
        assert out[10:] == [float(arr.sum()) - 4.0] * 10
        h.release()
        # Released: a later job brings it again (the head let it go), and still gets it.
        h2 = ex.scatter(BIG)
        assert ex.submit(pid_and_first, h2, 7).result(timeout=60)[1] == 7.0
        assert ex.submit(uses_global_by_value := by_value(), 4).result(timeout=60)[1] == 4.0
        del uses_global_by_value


def test_a_large_function_travels_once_per_server(ex):
    table = bytes(range(256)) * (MB // 128)  # 2 MB of bytes a by-value function names: its pickle is large

    def lookup(i):
        return table[i]
    assert [f.result(timeout=60) for f in [ex.submit(lookup, i) for i in range(6)]] == [table[i] for i in range(6)]
    assert 1 <= ex.stats()["objects_sent"] <= 2
