"""An archive that never lies, and one bad result never hides the others: a full disk, a result class the
client cannot import, damaged rows, an older layout, a native service returning bytes that are not UTF-8."""
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dynexec


def payload(i):
    # ~1.5 KB each, different for each job: a zeroed or misplaced value can never pass for it.
    return f"{i}:" + chr(ord("a") + i % 26) * (1500 + i % 13)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only), always unmounted; `grow(size)` gives it more room."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")

    def grow(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True, timeout=30)

    try:
        yield mount_point, grow
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=30)


def test_a_disk_that_fills_mid_run(small_disk, capfd):
    disk, grow = small_disk
    archive = disk / "archive"
    with dynexec.Executor(max_workers=2, archive=archive) as ex:
        futures = {i: ex.submit(payload, i) for i in range(2400)}  # ~3.6 MB of results into 1 MiB
        for f in futures.values():
            f.exception(timeout=120)
        failed = {i for i, f in futures.items() if f.exception() is not None}
        assert failed, "the disk never filled"
        for i in list(failed)[:50]:
            exc = futures[i].exception()
            assert isinstance(exc, dynexec.ArchiveError), repr(exc)
            assert futures[i].job_id in str(exc) and f"{ex.session}.h5" in str(exc)
            assert "No space left on device" in str(exc)
        assert "results not archived so far" in ex.stats()["archive_error"]
        grow("64m")  # space returns: archiving resumes by itself
        later = {i: ex.submit(payload, i) for i in range(2400, 2600)}
        assert [f.result(timeout=60) for f in later.values()] == [payload(i) for i in later]
        futures.update(later)
    err = capfd.readouterr().err
    assert err.count("dynexec: cannot write results to the archive") == 1, err  # told once, in plain words
    assert "No space left on device" in err and "ArchiveError" in err

    records = dynexec.read_archive(archive / f"{ex.session}.h5")
    for i, f in futures.items():
        if i in failed:
            assert f.job_id not in records, f"job {i} failed, yet its row reads {records[f.job_id]['status']}"
        else:  # reported success: it is in the archive, with its own value
            rec = records[f.job_id]
            assert rec["decode_error"] is None, rec["decode_error"]
            assert (rec["status"], rec["value"]) == ("ok", payload(i)), i
    assert len(records) == len(futures) - len(failed)


SERVER_ONLY = """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
"""


def make_point(where, x):
    # The class lives in a module only the servers can import.
    import sys
    sys.path.insert(0, where)
    import dynexec_test_server_only
    return dynexec_test_server_only.Point(x, -x)


def test_a_result_whose_class_the_client_cannot_import(tmp_path, archive):
    where = tmp_path / "server-only"
    where.mkdir()
    (where / "dynexec_test_server_only.py").write_text(SERVER_ONLY)
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        bad = ex.submit(make_point, str(where), 3)
        good = [ex.submit(abs, -i) for i in range(5)]
        with pytest.raises(dynexec.ResultDecodeError) as info:
            bad.result(timeout=30)
        assert [f.result(timeout=30) for f in good] == list(range(5))  # the collector lives on
    message = str(info.value)
    assert bad.job_id in message and "dynexec_test_server_only" in message
    assert "its result" in message and "not its call" in message
    assert info.value.job_id == bad.job_id and info.value.missing == "dynexec_test_server_only"
    assert "dynexec_test_server_only" not in sys.modules

    r = dynexec.find(bad.job_id, archive)  # every other field is there
    assert (r.status, r.service, r.server, r.attempts) == ("ok", "python", "server-1", 1)
    assert r.location.endswith(f"/results[{int(bad.job_id[-10:]) - 1}]")
    assert isinstance(r.decode_error, dynexec.ResultDecodeError)
    with pytest.raises(dynexec.ResultDecodeError, match="dynexec_test_server_only"):
        r.value
    assert "cannot be decoded" in repr(r)

    records = dynexec.read_archive(archive / f"{ex.session}.h5")
    assert len(records) == 6
    assert records[bad.job_id]["value"] is None and records[bad.job_id]["status"] == "ok"
    assert "dynexec_test_server_only" in records[bad.job_id]["decode_error"]
    assert [records[f.job_id]["value"] for f in good] == list(range(5))
    assert all(records[f.job_id]["decode_error"] is None for f in good)


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, BaseException):
        return type(a) is type(b) and a.args == b.args
    return a == b


def make_array(n):
    return np.arange(n, dtype=np.float64) * 0.5


def fail(message):
    raise ValueError(message)


def test_damaged_rows_never_hide_the_others(executor, archive, tmp_path):
    jobs = [executor.submit(payload, i) for i in range(20)] + [executor.submit(make_array, n) for n in range(1, 10)]
    jobs += [executor.submit(fail, f"bad {i}") for i in range(5)]
    jobs += [executor.submit_service("noop", x=v) for v in (1, 2.5, "text", b"raw", None, True)]
    for f in jobs:
        f.exception(timeout=30)
    executor.shutdown()
    original = archive / f"{executor.session}.h5"
    truth = dynexec.read_archive(original)
    assert len(truth) == len(jobs) and all(r["decode_error"] is None for r in truth.values())

    import h5py
    with h5py.File(original, "r") as f:
        results, heap = f["results"], f["heap"]
        row_size = results.dtype.itemsize
        chunks = [results.id.get_chunk_info(k) for k in range(results.id.get_num_chunks())]
        heap_chunks = [heap.id.get_chunk_info(k) for k in range(heap.id.get_num_chunks())]
        rows_per_chunk = results.chunks[0]
        heap_per_chunk = heap.chunks[0]
        refs = {job_id: tuple(int(v) for v in results[int(job_id[-10:]) - 1]["value"]) for job_id in truth}

    def file_offset_of_row(row):
        info = next(c for c in chunks if c.chunk_offset[0] == row // rows_per_chunk * rows_per_chunk)
        return info.byte_offset + (row % rows_per_chunk) * row_size

    def file_offset_of_heap(at):
        info = next(c for c in heap_chunks if c.chunk_offset[0] == at // heap_per_chunk * heap_per_chunk)
        return info.byte_offset + at % heap_per_chunk

    rng = random.Random(1234)
    damaged_copy = tmp_path / "damaged.h5"
    with_heap_value = [j for j, (offset, size) in refs.items() if size > 0]
    marked = 0
    for trial in range(30):
        shutil.copyfile(original, damaged_copy)
        victim = rng.choice(sorted(truth))
        with open(damaged_copy, "r+b") as out:
            for _ in range(rng.randint(1, 4)):
                if trial % 2 and victim in with_heap_value:  # the bytes of its value
                    offset, size = refs[victim]
                    at = file_offset_of_heap(offset + rng.randrange(size))
                else:  # its row: status, kind, shape, references, anything
                    at = file_offset_of_row(int(victim[-10:]) - 1) + rng.randrange(row_size)
                out.seek(at)
                byte = out.read(1)[0]
                out.seek(at)
                out.write(bytes([byte ^ (1 << rng.randrange(8))]))
        records = dynexec.read_archive(damaged_copy)  # never raises for the whole file
        for job_id, want in truth.items():
            if job_id == victim:
                continue
            got = records[job_id]
            assert got["decode_error"] is None, (trial, got["decode_error"])
            for key in want:
                assert same(got[key], want[key]), (trial, job_id, key)
        if victim in records and records[victim]["decode_error"] is not None:  # marked, naming the job
            marked += 1
            assert records[victim]["decode_error"].startswith(f"job {victim}: ")
            if "value" in records[victim]["decode_error"] or "unpickled" in records[victim]["decode_error"]:
                assert records[victim]["value"] is None
    assert marked >= 5, "the damage was never noticed: the test flips the wrong bytes"

    not_an_archive = tmp_path / "not-an-archive.h5"
    not_an_archive.write_bytes(b"this is not HDF5 at all" * 100)
    with pytest.raises(ValueError, match="not-an-archive.h5"):
        dynexec.read_archive(not_an_archive)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(ValueError, match="other.h5.*not a dynexec results archive"):
        dynexec.read_archive(tmp_path / "other.h5")


def test_a_version_2_archive_is_still_read(executor, archive, tmp_path):
    import h5py
    jobs = [executor.submit(payload, 1), executor.submit(make_array, 4), executor.submit(fail, "old")]
    for f in jobs:
        f.exception(timeout=30)
    executor.shutdown()
    new = archive / f"{executor.session}.h5"
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    with h5py.File(new, "r") as src, h5py.File(old_dir / new.name, "w") as dst:
        # Version 2 is version 3 without the stdout and stderr columns.
        assert src.attrs["version"] == 3
        fields = [(n, src["results"].dtype.fields[n][0]) for n in src["results"].dtype.names
                  if n not in ("stdout", "stderr")]
        rows = src["results"][()]
        old = np.zeros(len(rows), dtype=fields)
        for name, _ in fields:
            old[name] = rows[name]
        dst.create_dataset("results", data=old, maxshape=(None,), chunks=(256,))
        dst.create_dataset("heap", data=src["heap"][()], maxshape=(None,), chunks=(16384,))
        src.copy("values", dst)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["version"] = np.int32(2)
    records, before = dynexec.read_archive(old_dir / new.name), dynexec.read_archive(new)
    assert set(records) == set(before)
    for job_id, want in before.items():
        assert all(same(records[job_id][k], want[k]) for k in want), job_id
        assert records[job_id]["stdout"] == records[job_id]["stderr"] == ""
    r = dynexec.find(jobs[0].job_id, old_dir)  # the C++ finder reads it too
    assert (r.status, r.value, r.stdout) == ("ok", payload(1), "")
    assert dynexec.find(jobs[2].job_id, old_dir).message == "old"
    assert {rec["status"] for rec in before.values()} == {"ok", "error"}


LATIN1 = r"""
#include <dynexec/service.hpp>
#include <stdexcept>
#include <string>
DYNEXEC_SERVICES(r) {
    r.add({"test.latin1", "a str value that is not UTF-8", {{"x", dynexec::ValueType::integer}},
           [](const dynexec::Params& p) -> dynexec::Value {
               return std::string("caf\xe9 #") + std::to_string(p.get<std::int64_t>("x")); }});
    r.add({"test.bad_error", "fails with a message that is not UTF-8", {{"x", dynexec::ValueType::integer}},
           [](const dynexec::Params&) -> dynexec::Value { throw std::runtime_error("bad \xff\xfe message"); }});
    r.add({"test.fine", "a str value that is UTF-8", {{"x", dynexec::ValueType::integer}},
           [](const dynexec::Params& p) -> dynexec::Value {
               return std::string("caf\xc3\xa9 #") + std::to_string(p.get<std::int64_t>("x")); }});
}
"""


def test_a_native_string_that_is_not_utf8_fails_only_its_job(tmp_path, run_python, build_plugin):
    lib = build_plugin("latin1", LATIN1)
    # In a fresh process: a plugin is loaded once per process. Both kinds of servers: processes and threads.
    out = run_python(f"""
        import dynexec
        dynexec.load_services({str(lib)!r})
        for processes in (True, False):
            with dynexec.Executor(max_workers=2, archive={str(tmp_path / "archive")!r}, processes=processes) as ex:
                jobs = [(kind, i, ex.submit_service("test." + kind, x=i))
                        for i in range(30) for kind in ("latin1", "fine", "bad_error")]
                for kind, i, f in jobs:
                    if kind == "fine":
                        assert f.result(timeout=30) == f"café #{{i}}"
                        continue
                    exc = f.exception(timeout=30)
                    assert isinstance(exc, dynexec.ResultDecodeError), repr(exc)
                    text = str(exc)
                    assert f.job_id in text and "test." + kind in text, text
                    assert "returned a string that is not UTF-8" in text, text
                    assert ("caf\\\\xe9" if kind == "latin1" else "bad \\\\xff\\\\xfe message") in text, text
                assert ex.submit(pow, 2, 10).result(timeout=30) == 1024  # the collector lives on
                records = dynexec.read_archive(ex.archive / f"{{ex.session}}.h5")
                assert len(records) == len(jobs) + 1
                assert all(r["decode_error"] is None for r in records.values())
                found = dynexec.find(jobs[0][2].job_id, ex.archive)
                assert found.error_type == "dynexec.ResultDecodeError", found
                assert isinstance(found.exception(), dynexec.ResultDecodeError)
            print("ok", processes)
    """, timeout=180)
    assert out.split() == ["ok", "True", "ok", "False"]
