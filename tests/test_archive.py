"""The archive is plain HDF5: h5py reads it without dynexec, and later processes find results by job ID."""
import numpy as np
import pytest

import dynexec


def make(n):
    return np.arange(n, dtype=np.int32).reshape(2, -1)


def fail(message):
    raise ValueError(message)


def test_h5py_alone_reads_an_archived_result(executor, archive, run_python):
    f_arr = executor.submit(make, 6)
    f_obj = executor.submit(dict, a=1, b="two")
    f_pi = executor.submit_service("pi.monte_carlo", samples=1000)
    for f in (f_arr, f_obj, f_pi):
        f.result(timeout=10)
    executor.shutdown()
    location = dynexec.find(f_arr.job_id, archive).location
    path, where = location.split(":", 1)
    assert where.startswith("/results[")
    # The layout as the README documents it, read with h5py and numpy only.
    out = run_python(f"""
        import h5py, json, sys
        assert not any(m.startswith("dynexec") for m in sys.modules)
        with h5py.File({path!r}, "r") as f:
            results = f["results"]
            rows = {{r["job_id"].decode(): r for r in results[()]}}  # one row per job
            assert results[{where[len("/results["):-1]}]["job_id"].decode() == {f_arr.job_id!r}
            r = rows[{f_arr.job_id!r}]
            a = f[r["value"].decode()][()]  # /values/<job_id>: a typed dataset
            assert r["value"].decode() == "/values/" + {f_arr.job_id!r}
            print(r["status"].decode(), r["service"].decode(), r["function"].decode(), r["value_kind"].decode(),
                  a.dtype, a.tolist())
            o = rows[{f_obj.job_id!r}]
            print(o["value_kind"].decode(), json.loads(o["value"].decode()))
            print(rows[{f_pi.job_id!r}]["float_value"])
            assert not any(m.startswith("dynexec") for m in sys.modules)
    """)
    lines = out.splitlines()
    assert lines[0] == "ok python test_archive.make array int32 [[0, 1, 2], [3, 4, 5]]"
    assert lines[1] == "json {'a': 1, 'b': 'two'}"
    assert abs(float(lines[2]) - 3.14) < 0.2


def test_read_archive_decodes_every_kind_as_find_does(executor, archive):
    services = {kind: executor.submit_service("noop", x=v)
                for kind, v in (("none", None), ("bool", True), ("int", -7), ("float", 2.5), ("str", "héllo"),
                                ("bytes", b"\0raw"))}
    big = np.linspace(0, 1, 100_000)  # 800 kB: a dataset of its own
    jobs = {"small": executor.submit(make, 6), "big": executor.submit(np.copy, big),
            "bits": executor.submit(np.greater, big, 0.5), "dict": executor.submit(dict, a=1),
            "error": executor.submit(fail, "no good"), **services}
    for f in jobs.values():
        f.exception(timeout=30)
    executor.shutdown()
    records = dynexec.read_archive(archive / f"{executor.session}.h5")
    assert set(records) == {f.job_id for f in jobs.values()}
    for name, f in jobs.items():
        rec, found = records[f.job_id], dynexec.find(f.job_id, archive)
        for field in ("status", "error_type", "message", "traceback", "owner", "service", "server", "submit_time",
                      "start_time", "end_time", "attempts"):
            assert rec[field] == getattr(found, field), (name, field)
        if name == "error":
            assert rec["value_kind"] == "pickle" and isinstance(rec["value"], ValueError)
            assert rec["error_type"] == "ValueError" and rec["message"] == "no good"
        elif isinstance(found.value, np.ndarray):
            assert rec["value_kind"] == "array"
            assert rec["value"].dtype == found.value.dtype and rec["value"].shape == found.value.shape
            assert np.array_equal(rec["value"], found.value), name
        else:
            assert rec["value"] == found.value and type(rec["value"]) is type(found.value), name
    assert records[jobs["bits"].job_id]["value"].dtype == np.bool_
    assert all(records[f.job_id]["value_kind"] == kind for kind, f in services.items())

    some = dynexec.read_archive(archive / f"{executor.session}.h5", [jobs["big"].job_id, jobs["dict"].job_id])
    assert set(some) == {jobs["big"].job_id, jobs["dict"].job_id}
    assert some[jobs["dict"].job_id]["value"] == {"a": 1}
    with pytest.raises(ValueError, match="is not of session"):
        dynexec.read_archive(archive / f"{executor.session}.h5", ["0123456789ABCDEF-0000000001"])


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


def test_find_while_running_and_location_names_the_row(executor, archive):
    f = executor.submit(pow, 3, 4)
    f.result(timeout=10)
    r = executor.find(f.job_id)
    assert r.value == 81
    assert r.location == f"{archive}/{executor.session}.h5:/results[0]"  # rows in the order results come


def test_every_result_is_archived_exactly_once(executor, archive):
    futures = [executor.submit(abs, -i) for i in range(300)]
    [f.result(timeout=30) for f in futures]
    executor.shutdown()
    records = dynexec.read_archive(archive / f"{executor.session}.h5")
    assert sorted(records) == sorted(f.job_id for f in futures)
    assert sorted(r["value"] for r in records.values()) == list(range(300))


class Color(__import__("enum").IntEnum):
    RED = 1


def identity(x):
    return x


def test_plain_python_results_are_archived_as_their_kind_and_come_back_as_they_were(executor, archive):
    """None, bool, int (64 bits), float, str and bytes results are stored as themselves, so every HDF5 tool reads
    them; other values, subclasses and what those kinds cannot hold exactly keep going by pickle."""
    cases = {"none": (None, "none"), "bool": (True, "bool"), "int": (-7, "int"), "float": (2.5, "float"),
             "str": ("héllo", "str"), "bytes": (b"\0raw", "bytes"), "big int": (2 ** 70, "pickle"),
             "int enum": (Color.RED, "pickle"), "lone surrogate": ("a\udc80b", "pickle"),
             "str subclass": (type("Name", (str,), {})("x"), "pickle")}
    futures = {name: executor.submit(identity, value) for name, (value, _) in cases.items()}
    got = {name: f.result(timeout=30) for name, f in futures.items()}
    executor.shutdown()
    records = dynexec.read_archive(archive / f"{executor.session}.h5")
    for name, (value, kind) in cases.items():
        for back in (got[name], records[futures[name].job_id]["value"], dynexec.find(futures[name].job_id, archive).value):
            assert back == value and type(back).__name__ == type(value).__name__, name
        assert records[futures[name].job_id]["value_kind"] == kind, name
