"""The archive as other tools see it (h5py, pandas, h5dump), what it records of each job and session, and that
it stays private and whole after the writer is killed."""
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dynexec


def identity(x):
    return x


def fail(message):
    raise ValueError(message)


class Point:  # not JSON: pickled
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Point) and other.x == self.x


# Every value kind the archive keeps, and how h5dump shows it.
VALUES = {"none": None, "bool": True, "int": -7, "float": 2.5, "str": "hello, world", "unicode": "héllo wörld", "bytes": b"\x00raw",
          "small array": np.arange(6, dtype=np.int32).reshape(2, 3), "big array": np.linspace(0, 1, 20_000),
          "json": {"a": [1, 2.5, None, True], "b": "x"}, "list": [1, "two"], "pickle": Point(3)}


@pytest.fixture
def archived(tmp_path):
    """An archive holding every value kind, a failed job, and labelled jobs of a map: (file, {name: job_id})."""
    archive = tmp_path / "archive"
    with dynexec.Executor(max_workers=2, archive=archive, owner="alice@lab", label="every kind") as ex:
        jobs = {name: ex.submit(identity, v) for name, v in VALUES.items()}
        jobs["error"] = ex.submit(fail, "no good")
        jobs["service"] = ex.submit_service("noop", x=4.5)
        swept = ex.options(label="sweep-3", tags=["calib", "night"]).map(identity, [10, 20], futures=True)
        for f in [*jobs.values(), *swept]:
            f.exception(timeout=60)
        ids = {name: f.job_id for name, f in jobs.items()}
        ids["sweep"] = [f.job_id for f in swept]
        session = ex.session
    return archive / f"{session}.h5", ids


def test_pandas_and_h5py_alone_read_one_row_per_job(archived, run_python):
    path, ids = archived
    out = run_python(f"""
        import h5py, pandas as pd, sys
        df = pd.DataFrame(h5py.File({str(path)!r})["results"][()])             # the README's one-liner
        text = df.applymap(lambda v: v.decode() if isinstance(v, bytes) else v)  # its texts as str
        assert not any(m.startswith("dynexec") for m in sys.modules)
        print(len(df), df["job_id"].is_unique)
        row = text.set_index("job_id").loc[{ids["int"]!r}]
        print(row["status"], row["value_kind"], row["int_value"], row["owner"], row["service"], row["function"],
              row["summary"], row["server"].startswith("server-"), row["end_time"] >= row["start_time"] > 0)
        err = text.set_index("job_id").loc[{ids["error"]!r}]
        print(err["status"], err["error_type"], err["message"])
        print(sorted(text[text["label"] == "sweep-3"]["job_id"]))
    """)
    lines = out.splitlines()
    assert lines[0] == f"{len(VALUES) + 4} True"  # no empty rows: every row is a job
    assert lines[1] == "ok int -7 alice@lab python test_archive_layout.identity identity(-7) True True"
    assert lines[2] == "error ValueError no good"
    assert lines[3] == str(sorted(ids["sweep"]))


def test_h5dump_shows_what_a_person_needs(archived):
    path, ids = archived
    dump = subprocess.run(["h5dump", "-d", "results", str(path)], capture_output=True, text=True, timeout=60,
                          check=True).stdout
    rows = {}
    for block in re.split(r"^   \(\d+\): \{$", dump, flags=re.M)[1:]:  # one per row; a field's first line is
        fields = [line.strip().rstrip(",") for line in block.splitlines()  # indented 9 (a traceback goes on)
                  if re.match(r"^ {9}\S", line)]
        rows[fields[0].strip('"')] = fields
    names = list(np.dtype(__import__("h5py").File(path)["results"].dtype).names)
    def field(job, name):
        return rows[ids[job]][names.index(name)]
    assert field("int", "status") == '"ok"' and field("int", "value_kind") == '"int"'
    assert field("int", "int_value") == "-7" and field("float", "float_value") == "2.5"
    assert field("bool", "int_value") == "1" and field("none", "value_kind") == '"none"'
    assert field("str", "value") == '"hello, world"'  # (h5dump 1.10 prints non-ASCII UTF-8 as octal escapes)
    assert field("json", "value") == '"{"a": [1, 2.5, null, true], "b": "x"}"'
    assert field("list", "value_kind") == '"json"' and field("pickle", "value_kind") == '"pickle"'
    assert field("bytes", "value_bytes") == "(0, 114, 97, 119)"
    assert field("small array", "value") == f'"/values/{ids["small array"]}"'
    assert field("int", "owner") == '"alice@lab"' and field("int", "function") == '"test_archive_layout.identity"'
    assert field("int", "summary") == '"identity(-7)"' and field("int", "args") == '"{"args": [-7], "kwargs": {}}"'
    assert field("service", "service") == '"noop"' and field("service", "summary") == '"noop(x=4.5)"'
    assert field("error", "error_type") == '"ValueError"' and field("error", "message") == '"no good"'
    assert field("error", "status") == '"error"'
    sweep = rows[ids["sweep"][0]]
    assert sweep[names.index("label")] == '"sweep-3"' and sweep[names.index("tags")] == '"["calib", "night"]"'
    assert "ATTRIBUTE \"time_unit\"" in dump and "seconds since 1970-01-01T00:00:00Z" in dump
    # Arrays are typed datasets at their job's path; the session says who, where and when.
    arr = subprocess.run(["h5dump", "-d", f"/values/{ids['small array']}", str(path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "H5T_STD_I32LE" in arr and "( 2, 3 )" in arr and "(0,0): 0, 1, 2," in arr
    attrs = subprocess.run(["h5dump", "-A", "-g", "/", str(path)], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    for name in ("version", "user", "host", "start_time", "end_time", "script", "label", "dynexec_version"):
        assert f'ATTRIBUTE "{name}"' in attrs, name
    assert '"every kind"' in attrs


def test_read_archive_finds_by_label_and_as_a_frame(archived):
    path, ids = archived
    records = dynexec.read_archive(path)
    for name, want in VALUES.items():
        got = records[ids[name]]["value"]
        assert (np.array_equal(got, want) and got.dtype == want.dtype) if isinstance(want, np.ndarray) else got == want
        assert type(got) is type(want), name
    assert records[ids["json"]]["value_kind"] == "json" and records[ids["big array"]]["value_kind"] == "array"
    assert records[ids["int"]]["args"] == '{"args": [-7], "kwargs": {}}'
    assert set(dynexec.read_archive(path, label="sweep-3")) == set(ids["sweep"])
    assert set(dynexec.read_archive(path, tag="night")) == set(ids["sweep"])
    assert dynexec.read_archive(path, label="nope") == {}
    r = dynexec.find(ids["sweep"][1], path.parent)
    assert (r.value, r.label, r.tags, r.function, r.summary) == (20, "sweep-3", ("calib", "night"),
                                                                 "test_archive_layout.identity", "identity(20)")
    df = dynexec.read_archive(path, as_frame=True)
    assert len(df) == len(records) and df.index.name == "job_id"
    assert str(df["end_time"].dtype) == "datetime64[ns, UTC]"
    assert df.loc[ids["float"], "value"] == 2.5 and df.loc[ids["error"], "status"] == "error"
    [session] = dynexec.sessions(path.parent)
    assert (session["session"], session["label"], session["jobs"], session["version"]) == (
        path.stem, "every kind", len(records), 5)
    assert session["start_time"] <= session["end_time"] and session["user"] and session["host"]
    assert session["dynexec_version"] == dynexec.__version__ and session["script"]


def test_a_file_of_layout_4_is_still_found_and_read(archived, tmp_path):
    """Layout 4 (2026-12-01) had a variable-length summary; 5 has a fixed-size one. A copy of the archive made
    with h5py in layout 4 reads as the original."""
    import h5py
    path, ids = archived
    old = tmp_path / "old" / path.name
    old.parent.mkdir()
    with h5py.File(path, "r") as src, h5py.File(old, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        dst.attrs["version"] = np.int32(4)
        rows = src["results"][()]
        dtype = [(n, h5py.string_dtype() if n == "summary" else rows.dtype[n]) for n in rows.dtype.names]
        table = np.empty(len(rows), dtype=dtype)
        for n in rows.dtype.names:
            table[n] = [v.decode() for v in rows[n]] if n == "summary" else rows[n]
        dst.create_dataset("results", data=table, chunks=(32,), maxshape=(None,))
        for name in ("index", "values"):
            src.copy(name, dst)
    assert h5py.check_string_dtype(h5py.File(old)["results"].dtype["summary"]).length is None  # variable
    r = dynexec.find(ids["sweep"][1], old.parent)
    assert (r.value, r.summary, r.label, r.function) == (20, "identity(20)", "sweep-3", "test_archive_layout.identity")
    assert dynexec.find(ids["small array"], old.parent).value.shape == (2, 3)
    records = dynexec.read_archive(old)
    assert records[ids["int"]]["summary"] == "identity(-7)" and records[ids["json"]]["value"] == VALUES["json"]
    assert dynexec.sessions(old.parent)[0]["version"] == 4


def many(*args, **kwargs):
    return len(args) + len(kwargs)


def test_a_long_summary_fits_its_column(tmp_path):
    with dynexec.Executor(max_workers=1, archive=tmp_path) as ex:
        f = ex.submit(many, *["é" * 20] * 5, **{f"k{i}": "ü" * 20 for i in range(5)})
        assert f.result(timeout=60) == 10
    r = dynexec.find(f.job_id, tmp_path)
    assert r.summary.startswith("many('éé") and r.summary.endswith("...)") and len(r.summary.encode()) <= 95, r.summary
    assert json.loads(r.args)["kwargs"]["k4"] == "ü" * 20  # the arguments whole


def test_archive_files_are_private_unless_shared_with_the_group(tmp_path):
    mine, ours = tmp_path / "mine" / "archive", tmp_path / "ours"
    with dynexec.Executor(max_workers=1, archive=mine, processes=False) as ex:
        ex.submit(abs, -1).result(timeout=30)
    [file] = mine.glob("*.h5")
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(mine).st_mode) == stat.S_IMODE(os.stat(mine.parent).st_mode) == 0o700
    old = os.umask(0o022)
    try:
        with dynexec.Executor(max_workers=1, archive=ours, processes=False, archive_mode="group") as ex:
            ex.submit(abs, -1).result(timeout=30)
    finally:
        os.umask(old)
    [file] = ours.glob("*.h5")
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o640 and stat.S_IMODE(os.stat(ours).st_mode) == 0o750
    with pytest.raises(ValueError, match="archive_mode"):
        dynexec.Executor(max_workers=1, archive=ours, archive_mode="world")


def test_job_options_check_label_and_tags(tmp_path):
    with dynexec.Executor(max_workers=1, archive=tmp_path, processes=False) as ex:
        with pytest.raises(TypeError, match="tags must be a list of str"):
            ex.options(tags="one")
        with pytest.raises(TypeError, match="label must be a str"):
            ex.options(label=3)
        opts = ex.options(label="a").options(tags=["t"])
        assert "label='a'" in repr(opts) and "tags=['t']" in repr(opts)
        assert opts.submit(abs, -2).result(timeout=30) == 2


WRITER = """
import sys, time, dynexec
ex = dynexec.Executor(max_workers=2, archive=sys.argv[1])
futures = []
for i in range(40):
    futures.append(ex.submit(abs, -i))
    if i % 10 == 9:
        for f in futures:
            f.result(timeout=60)
        print(" ".join(f.job_id for f in futures[-10:]), flush=True)
        time.sleep(0.05)
for i in range(200):
    ex.submit(time.sleep, 0.01)  # still running when it is killed
print("go", flush=True)
time.sleep(60)
"""


def test_every_resolved_result_survives_a_kill_of_the_writer(tmp_path):
    archive = tmp_path / "archive"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(archive)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    resolved = []
    try:
        for line in proc.stdout:
            if line.strip() == "go":
                break
            resolved += line.split()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(resolved) == 40
    [file] = archive.glob("*.h5")
    records = dynexec.read_archive(file)
    for i, job_id in enumerate(resolved):
        assert records[job_id]["value"] == i and records[job_id]["decode_error"] is None
        assert dynexec.find(job_id, archive).value == i


def test_the_readmes_archive_example_runs_as_pasted(tmp_path):
    readme = (os.path.dirname(__file__) + "/../README.md")
    text = open(readme, encoding="utf-8").read()
    block = text[text.index("## The archive"):].split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "DYNEXEC_ARCHIVE": str(tmp_path / "archive")}
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[4, 9, 16]\nok 4 builtins.pow pow(2, 2) sweep ")
    assert "'label': 'demo'" in proc.stdout and "pow(4, 2)" in proc.stdout
