"""An archive that never lies, and one bad result never hides the others: a full disk, a result class the
client cannot import, damaged rows, an older layout, a native service returning bytes that are not UTF-8."""
import os
import random
import re
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
    assert re.search(r"\.h5:/results\[\d+\]$", r.location)
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


def archived(executor, archive, jobs):
    """(the session's archive file, what read_archive gives of it) once `jobs` are done and the executor shut
    down; every row reads back whole."""
    for f in jobs:
        f.exception(timeout=30)
    executor.shutdown()
    original = archive / f"{executor.session}.h5"
    truth = dynexec.read_archive(original)
    assert len(truth) == len(jobs) and all(r["decode_error"] is None for r in truth.values())
    return original, truth


def test_damaged_rows_never_hide_the_others(executor, archive, tmp_path):
    jobs = [executor.submit(payload, i) for i in range(20)] + [executor.submit(make_array, n) for n in range(1, 10)]
    jobs += [executor.submit(fail, f"bad {i}") for i in range(5)]
    jobs += [executor.submit_service("noop", x=v) for v in (1, 2.5, "text", b"raw", None, True)]
    original, truth = archived(executor, archive, jobs)

    import h5py
    with h5py.File(original, "r") as f:
        results, index = f["results"], f["index"]
        chunks = [results.id.get_chunk_info(k) for k in range(results.id.get_num_chunks())]
        rows_per_chunk = results.chunks[0]
        row_size = chunks[0].size // rows_per_chunk  # in the file: a string there is a 16-byte global heap ID
        row_of = {job_id: int(index[int(job_id[-10:]) - 1]) - 1 for job_id in truth}
        # The offsets in the file of the members that are not variable-length (those are 16 bytes each there).
        fixed_bytes, at = [], 0
        for name in results.dtype.names:
            kind = results.dtype.fields[name][0]
            size = 16 if kind.kind == "O" else kind.itemsize
            if kind.kind != "O":
                fixed_bytes += range(at, at + size)
            at += size
        assert at == row_size

    def file_offset_of_row(row):
        info = next(c for c in chunks if c.chunk_offset[0] == row // rows_per_chunk * rows_per_chunk)
        return info.byte_offset + (row % rows_per_chunk) * row_size

    rng = random.Random(1234)
    damaged_copy = tmp_path / "damaged.h5"
    marked = 0
    for trial in range(30):
        shutil.copyfile(original, damaged_copy)
        victim = rng.choice(sorted(truth))
        with open(damaged_copy, "r+b") as out:
            for _ in range(rng.randint(1, 4)):  # its row's own bytes: job_id, status, value_kind, numbers
                # (the 16-byte global heap IDs of its strings: test_damaged_string_references_never_crash_the_reader)
                at = file_offset_of_row(row_of[victim]) + rng.choice(fixed_bytes)
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
            assert records[victim]["decode_error"].startswith(f"job {victim} in {damaged_copy}: ")
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


def _old_archive(path, session, version):
    """A file of layout version 2 or 3 (rows by job ID, texts in /heap), as an older dynexec wrote it."""
    import h5py
    status = h5py.enum_dtype({n: i for i, n in enumerate(["absent", "ok", "error", "cancelled", "lost", "killed",
                                                           "timeout"])}, basetype="u1")
    kind = h5py.enum_dtype({n: i for i, n in enumerate(["none", "bool", "int", "float", "str", "bytes", "pickle",
                                                         "array"])}, basetype="u1")
    texts = ["value", "owner", "service", "server", "error_type", "message", "traceback"]
    texts += ["stdout", "stderr"] if version == 3 else []
    dtype = [("status", status), ("value_kind", kind), ("external", "u1"), ("ndim", "u1"), ("attempts", "<i4"),
             ("dtype", "S8"), ("submit_time", "<f8"), ("start_time", "<f8"), ("end_time", "<f8"),
             ("int_value", "<i8"), ("float_value", "<f8"), ("shape", "<u8", (8,))] + [(t, "<u8", (2,)) for t in texts]
    heap = bytearray()

    def ref(b):
        heap.extend(b)
        return (len(heap) - len(b), len(b))
    rows = np.zeros(3, dtype=dtype)  # job 2 was never written: its row is "absent"
    rows[0]["status"], rows[0]["value_kind"], rows[0]["int_value"] = 1, 2, 42
    rows[2]["status"], rows[2]["value_kind"], rows[2]["value"] = 1, 4, ref("héllo".encode())
    for r in (rows[0], rows[2]):
        r["owner"], r["service"], r["attempts"] = ref(b"alice@lab"), ref(b"python"), 1
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["version"], f.attrs["session"] = "dynexec results archive", np.int32(version), session
        f.create_dataset("results", data=rows, maxshape=(None,), chunks=(256,))
        f.create_dataset("heap", data=np.frombuffer(bytes(heap), np.uint8), maxshape=(None,), chunks=(16384,))
        f.create_group("values")


@pytest.mark.parametrize("version", [2, 3])
def test_an_archive_of_an_older_layout_is_still_read(tmp_path, version):
    session = "01M8C6FA99ZKCZ07"
    _old_archive(tmp_path / f"{session}.h5", session, version)
    records = dynexec.read_archive(tmp_path / f"{session}.h5")
    assert list(records) == [f"{session}-0000000001", f"{session}-0000000003"]
    first, third = records.values()
    assert (first["status"], first["value"], first["owner"], first["stdout"]) == ("ok", 42, "alice@lab", "")
    assert (third["value_kind"], third["value"], third["label"], third["tags"]) == ("str", "héllo", "", ())
    assert dynexec.read_archive(tmp_path / f"{session}.h5", label="x") == {}
    [info] = dynexec.sessions(tmp_path)
    assert (info["session"], info["version"], info["jobs"]) == (session, version, 2)
    # find() reads only the current layout, and says so.
    with pytest.raises(dynexec.ArchiveError, match=f"layout version {version}, of an older dynexec.*read_archive"):
        dynexec.find(f"{session}-0000000001", tmp_path)


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


# One process runs the trials in turn (a fresh one per trial would cost seconds): it says when it starts a
# trial and what it saw; a trial it never finished is one that killed it, and the next process goes on after it.
FLIP_WORKER = r"""
import json, os, shutil, sys
import dynexec
original, plan, first = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
for k in range(first, len(plan["trials"])):
    job, at, bit = plan["trials"][k]
    print("start", k, flush=True)
    where = os.path.join(plan["dir"], str(k))
    os.makedirs(where)
    copy = os.path.join(where, os.path.basename(original))
    shutil.copyfile(original, copy)
    with open(copy, "r+b") as out:
        out.seek(at)
        byte = out.read(1)[0]
        out.seek(at)
        out.write(bytes([byte ^ (1 << bit)]))
    records = {j: {key: repr(v) for key, v in r.items() if key != "decode_error"} | {"decode_error": r["decode_error"]}
               for j, r in dynexec.read_archive(copy).items()}
    assert dynexec.read_archive(copy, tag="none") == {}  # the label and tag columns, read around damaged rows
    try:
        found = ("ok", repr(dynexec.find(job, where).value))
    except Exception as exc:
        found = (type(exc).__name__, str(exc))
    shutil.rmtree(where)
    print("done", k, json.dumps({"records": records, "found": found}), flush=True)
"""


def echo(i):
    print(f"output of {i}")
    if i % 3 == 2:
        raise KeyError(f"key {i}")
    return {"i": i, "text": "é" * i} if i % 3 else f"text {i}"


def test_damaged_string_references_never_crash_the_reader(executor, archive, tmp_path):
    """Every byte of the heap references of two rows (a job's texts, its bytes), one bit at a time: libhdf5
    1.10 follows them blindly, so they are checked against the file first."""
    jobs = [executor.submit(echo, i) for i in range(6)] + [executor.submit_service("noop", x=b"raw bytes")]
    original, truth = archived(executor, archive, jobs)

    import h5py
    with h5py.File(original, "r") as f:
        results, index = f["results"], f["index"]
        [chunk] = [results.id.get_chunk_info(k) for k in range(results.id.get_num_chunks())]
        row_size = chunk.size // results.chunks[0]
        refs, at = [], 0  # the offsets in a row of its variable-length members (16 bytes each in the file)
        for name in results.dtype.names:
            kind = results.dtype.fields[name][0]
            if kind.kind == "O":
                refs.append(name)
                refs[-1] = (name, at)
            at += 16 if kind.kind == "O" else kind.itemsize
        assert at == row_size and len(refs) == 14  # the summary is fixed-size
        row_of = {job_id: int(index[int(job_id[-10:]) - 1]) - 1 for job_id in truth}
    rng = random.Random(99)
    victims = [jobs[2].job_id, jobs[6].job_id]  # a failed job (traceback, message, pickled error), bytes
    trials = [(job, chunk.byte_offset + row_of[job] * row_size + offset + b, rng.choice((0, 1, rng.randrange(8), 7)))
              for job in victims for _, offset in refs for b in range(16)]
    plan = tmp_path / "plan.json"
    plan.write_text(__import__("json").dumps({"trials": trials, "dir": str(tmp_path / "trials")}))
    (tmp_path / "trials").mkdir()

    seen, crashed, first = {}, [], 0
    while first < len(trials):
        proc = subprocess.run([sys.executable, "-c", FLIP_WORKER, str(original), str(plan), str(first)],
                              capture_output=True, text=True, timeout=300)
        started = None
        for line in proc.stdout.splitlines():
            word, k, *rest = line.split(" ", 2)
            if word == "start":
                started = int(k)
            else:
                seen[int(k)] = __import__("json").loads(rest[0])
                started = None
        if proc.returncode == 0 and started is None:
            break
        assert started is not None, proc.stderr[-2000:]  # a worker that failed between trials: a bug of the test
        crashed.append((trials[started], proc.returncode, proc.stderr[-300:]))
        shutil.rmtree(tmp_path / "trials" / str(started), ignore_errors=True)
        first = started + 1
    assert not crashed, f"{len(crashed)} of {len(trials)} trials killed the reader, the first: {crashed[0]}"
    assert len(seen) == len(trials)

    marked = 0
    for k, (job, at, bit) in enumerate(trials):
        records, found = seen[k]["records"], seen[k]["found"]
        for job_id, want in truth.items():  # every other row comes back whole
            if job_id != job:
                assert records[job_id]["decode_error"] is None, (k, records[job_id]["decode_error"])
                assert records[job_id]["value"] == repr(want["value"]), (k, job_id)
        error = records[job]["decode_error"]
        if error is None:  # the flip left a reference that is sound (another object of the same size)
            assert found[0] == "ok", (k, found)
            continue
        marked += 1
        assert error.startswith(f"job {job} in "), (k, error)
        if "damaged reference" in error:  # never handed to libhdf5: it names the member
            assert records[job]["status"] == "None"
            assert found[0] == "ArchiveError" and job in found[1] and "damaged reference" in found[1], (k, found)
            assert str(tmp_path / "trials" / str(k)) in found[1], (k, found)
    assert marked >= len(trials) * 3 // 4, f"only {marked} of {len(trials)} flips were noticed"
