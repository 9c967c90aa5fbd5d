"""The archive is plain HDF5: h5py reads it without dynexec, and later processes find results by job ID."""
import numpy as np

import dynexec


def make(n):
    return np.arange(n, dtype=np.int32).reshape(2, -1)


def test_h5py_alone_reads_an_archived_result(executor, archive, run_python):
    f_arr = executor.submit(make, 6)
    f_obj = executor.submit(dict, a=1, b="two")
    f_pi = executor.submit_service("pi.monte_carlo", samples=1000)
    for f in (f_arr, f_obj, f_pi):
        f.result(timeout=10)
    executor.shutdown()
    location = dynexec.find(f_arr.job_id, archive).location
    path, group = location.split(":", 1)
    out = run_python(f"""
        import h5py, pickle, sys
        assert not any(m.startswith("dynexec") for m in sys.modules)
        with h5py.File({path!r}, "r") as f:
            g = f[{group!r}]
            print(g.attrs["status"], g.attrs["service"], g.attrs["value_kind"], g["value"].dtype, g["value"][()].tolist())
            o = f["jobs/{f_obj.job_id}"]
            print(o.attrs["value_kind"], pickle.loads(o["value"][()].tobytes()))
            print(f["jobs/{f_pi.job_id}/value"][()])
            assert not any(m.startswith("dynexec") for m in sys.modules)
    """)
    lines = out.splitlines()
    assert lines[0] == "ok python array int32 [[0, 1, 2], [3, 4, 5]]"
    assert lines[1] == "pickle {'a': 1, 'b': 'two'}"
    assert abs(float(lines[2]) - 3.14) < 0.2


def test_result_found_by_a_later_process(archive, run_python):
    with dynexec.Executor(max_workers=1, archive=archive, owner="alice@lab") as ex:
        f = ex.submit(sum, [1, 2, 3])
        f.result(timeout=10)
    out = run_python(f"""
        import dynexec
        r = dynexec.find({f.job_id!r}, archive={str(archive)!r})
        print(r.status, r.value, r.owner, r.service, r.server, r.attempts, r.submit_time <= r.start_time <= r.end_time)
    """)
    assert out.split() == ["ok", "6", "alice@lab", "python", "server-1", "1", "True"]


def test_find_while_running_and_location_names_the_job(executor, archive):
    f = executor.submit(pow, 3, 4)
    f.result(timeout=10)
    r = executor.find(f.job_id)
    assert r.value == 81
    assert r.location == f"{archive}/{executor.session}.h5:/jobs/{f.job_id}"


def test_every_result_is_archived_exactly_once(executor, archive):
    import h5py
    futures = [executor.submit(abs, -i) for i in range(300)]
    [f.result(timeout=30) for f in futures]
    executor.shutdown()
    with h5py.File(archive / f"{executor.session}.h5", "r") as h:
        assert sorted(h["jobs"].keys()) == sorted(f.job_id for f in futures)
