"""Results as the archive keeps them, and the results finder."""
from __future__ import annotations

import dataclasses
import os
import pickle
import json
from pathlib import Path
from typing import Any

from . import _core
from .errors import (ArchiveError, BrokenExecutorError, CommandError, JobKilledError, JobTimeoutError, RemoteError,
                     ResultDecodeError, ResultNotFoundError, ServerDiedError, ServerLostError, ShutDownError, _decode_error,
                     _RemoteTraceback)


def default_archive() -> Path:
    """$DYNEXEC_ARCHIVE, else $XDG_DATA_HOME/dynexec/archive (~/.local/share/dynexec/archive)."""
    if os.environ.get("DYNEXEC_ARCHIVE"):
        return Path(os.environ["DYNEXEC_ARCHIVE"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "dynexec" / "archive"


def _open_h5(path):
    """The archive file at `path`, opened with h5py to read; ValueError naming it if it is no HDF5 file."""
    import h5py
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{path} is not a dynexec results archive: {exc}") from exc


# Native services fail with C++ exceptions; these become the Python exceptions a user expects.
_NATIVE_ERRORS = {
    "std::invalid_argument": ValueError,
    "std::domain_error": ValueError,
    "std::length_error": ValueError,
    "std::out_of_range": IndexError,
    "std::overflow_error": OverflowError,
    "std::bad_alloc": MemoryError,
    "std::runtime_error": RuntimeError,
}


# Errors the engine itself gives a job's result (error_type "dynexec.<name>").
_ENGINE_ERRORS = {"dynexec.ArchiveError": ArchiveError, "dynexec.ResultDecodeError": ResultDecodeError}


@dataclasses.dataclass(frozen=True)
class Result:
    """One job's result. `value` is the return value; `exception()` rebuilds the failure.

    When the value cannot be decoded in this process (its class is not importable here, its bytes are damaged),
    every other field is still there, `decode_error` says what failed, and reading `value` raises it.
    """

    job_id: str
    status: str  # "ok", "error", "cancelled", "lost", "killed" or "timeout"
    value: Any
    error_type: str
    message: str
    traceback: str
    owner: str
    service: str
    server: str
    submit_time: float
    start_time: float
    end_time: float
    attempts: int
    location: str
    stdout: str = ""
    stderr: str = ""
    function: str = ""  # a Python job's callable, "module.qualname" ("" for a service job)
    args: str = ""      # its arguments as JSON text {"args": [...], "kwargs": {...}}; "" if not JSON-representable
    summary: str = ""   # a short printable form of the call, e.g. "f(1, x=2)"
    label: str = ""     # the label given with Executor.options(label=...)
    tags: tuple = ()    # the tags given with Executor.options(tags=[...])
    _error_payload: bytes = dataclasses.field(default=b"", repr=False)
    decode_error: ResultDecodeError | None = dataclasses.field(default=None, compare=False)

    def __repr__(self):  # never raises, also for a value that cannot be decoded
        parts = []
        for f in dataclasses.fields(self):
            if f.name == "value" and self.decode_error is not None:
                parts.append("value=<cannot be decoded>")
            elif f.repr:
                parts.append(f"{f.name}={self.__dict__[f.name]!r}")
        return f"Result({', '.join(parts)})"

    def _repr_html_(self):
        from .display import result_html
        return result_html(self)

    @classmethod
    def from_core(cls, r: _core.Result) -> Result:
        job_id = r.job_id
        value, payload, error = None, b"", None
        try:
            raw, kind = r.raw_value, r.value_kind
        except Exception as exc:  # a str that is not UTF-8, in an archive written before such values were refused
            raw, kind = None, "none"
            error = ResultDecodeError(f"job {job_id}: its result cannot be decoded here: {exc}", job_id)
            error.__cause__ = exc
        if r.status == "error":
            payload = raw if kind == "pickle" else b""
            if kind != "pickle":  # a native service's own detail, e.g. a failed command's exit code
                value = raw
        elif kind == "pickle":
            try:
                value = pickle.loads(raw)
            except Exception as exc:  # its class is not importable here: the other fields still are
                error = _decode_error(job_id, exc)
        else:
            value = raw
        return cls(job_id, r.status, value, r.error_type, r.message, r.traceback, r.owner, r.service, r.server,
                   r.submit_time, r.start_time, r.end_time, r.attempts, r.location, r.stdout, r.stderr, r.function,
                   r.args, r.summary, r.label, _tags(r.tags), payload, error)

    def exception(self) -> BaseException | None:
        """The job's exception, with its own type and the remote traceback as its cause; None if it succeeded.
        For a success whose value cannot be decoded here, its ResultDecodeError."""
        if self.status == "ok":
            return self.decode_error
        if self.error_type in _ENGINE_ERRORS:  # the job's result, not the job, failed: no remote traceback
            cls = _ENGINE_ERRORS[self.error_type]
            return cls(self.message, self.job_id) if cls is ResultDecodeError else cls(self.message)
        if self.status == "lost":
            kind = {"ServerDiedError": ServerDiedError, "BrokenExecutor": BrokenExecutorError,
                    "ShutDownError": ShutDownError}.get(self.error_type)
            return (kind or ServerLostError)(self.message)
        if self.status in ("killed", "timeout"):
            return (JobTimeoutError if self.status == "timeout" else JobKilledError)(self.message)
        if self.status == "cancelled":
            from concurrent.futures import CancelledError
            return CancelledError(self.message)
        exc = None
        if self._error_payload:
            try:
                exc = pickle.loads(self._error_payload)
            except Exception:  # its class is not importable here: fall back to the text
                exc = None
        if not isinstance(exc, BaseException) and self.error_type == "CommandError":
            exc = CommandError(self.message, self.value if isinstance(self.value, int) else None)
        if not isinstance(exc, BaseException) and self.error_type in _NATIVE_ERRORS:
            exc = _NATIVE_ERRORS[self.error_type](f"{self.service}: {self.message}")
        if not isinstance(exc, BaseException):
            exc = RemoteError(self.error_type, self.message, self.traceback)
        if self.traceback:
            exc.__cause__ = _RemoteTraceback(self.traceback)
        return exc


_ARRAY_DTYPES = frozenset(_core.array_dtypes)  # the one list, in value.hpp
_TEXT_FIELDS = ("error_type", "message", "traceback", "owner", "service", "server", "stdout", "stderr")
_ROWS_PER_READ = 256  # a chunk of /results: what one damaged chunk can take with it


def _tags(text: str) -> tuple:
    if not text:
        return ()
    try:
        tags = json.loads(text)
    except ValueError:
        return (text,)
    return tuple(str(t) for t in tags) if isinstance(tags, list) else (str(tags),)


def _read_archive_v3(path: str | os.PathLike, job_ids=None) -> dict[str, dict]:
    """Reads a results archive file with h5py and numpy alone: {job_id: record}, in job order.

    `path` is one session's file, `<archive>/<session>.h5`; `job_ids` limits the records to those jobs
    (jobs not in the file are left out). Each record is a dict with job_id, status ("ok", "error",
    "cancelled", "lost", "killed", "timeout"), value_kind, value, error_type, message, traceback, owner, service,
    server, stdout, stderr (what the job printed; "" in a version-2 file), submit_time, start_time, end_time
    (Unix seconds), attempts and decode_error. `value` is decoded: None, bool, int, float, str, bytes, a numpy
    array with its dtype and shape, or for value_kind "pickle" the unpickled object (for a failed job, its
    exception).

    One bad row never hides the others: a value that cannot be decoded here (its class is not importable, its
    bytes are damaged) leaves that record's `value` None and says why in `decode_error` (None for a record read
    whole); its other fields are all there. A row HDF5 cannot read at all has status None.

    The file is plain HDF5 (the layout is in cpp/archive/results_archive.hpp): /results holds a row per
    job (row = sequence number - 1), texts and small values are (offset, size) slices of /heap, and
    values over 64 KiB are datasets /values/<job_id>. Raises ValueError naming the file if it is not such an
    archive (layout version 2 or 3), or if a job ID is not one of its session.
    """
    import h5py
    import numpy as np

    def names(field):  # code -> name, from the enum type the file declares
        return {v: k for k, v in h5py.check_enum_dtype(field).items()}

    f = _open_h5(path)
    with f:
        try:
            version = f.attrs.get("version")
            if "results" not in f or "heap" not in f or version not in (2, 3):
                raise ValueError("no /results and /heap of layout version 2 or 3")
            session = f.attrs["session"]
            session = session.decode() if isinstance(session, bytes) else str(session)
            results, heap_ds = f["results"], f["heap"]
            statuses, kinds = names(results.dtype["status"]), names(results.dtype["value_kind"])
            heap_size = int(heap_ds.size)
        except Exception as exc:
            raise ValueError(f"{path} is not a dynexec results archive: {exc}") from exc
        texts = [k for k in _TEXT_FIELDS if k in results.dtype.names]  # version 2 has no stdout, stderr
        n = len(results)

        if job_ids is None:
            wanted = None
        else:
            wanted = set()
            for job_id in job_ids:
                head, _, seq = str(job_id).rpartition("-")
                if not (head and len(seq) == 10 and seq.isdigit() and int(seq) > 0):
                    raise ValueError(f"{job_id!r} is not a dynexec job ID")
                if head != session:
                    raise ValueError(f"job {job_id} is not of session {session}, whose archive is {path}")
                if int(seq) <= n:
                    wanted.add(int(seq) - 1)
            wanted = sorted(wanted)

        def rows():  # (row index, row or the exception that kept HDF5 from reading it), rows of a result only
            def one_by_one(indices):
                for i in indices:
                    try:
                        yield i, results[i]
                    except Exception as exc:
                        yield i, exc
            if wanted is None:
                try:
                    blocks = [(0, results[()])]  # the usual case: one read
                except Exception:
                    blocks = []
                    for start in range(0, n, _ROWS_PER_READ):
                        stop = min(n, start + _ROWS_PER_READ)
                        try:
                            blocks.append((start, results[start:stop]))
                        except Exception:  # a damaged chunk: read what can be read of it
                            yield from ((i, r) for i, r in one_by_one(range(start, stop))
                                        if isinstance(r, Exception) or r["status"] != 0)
                for start, block in blocks:
                    for k in np.flatnonzero(block["status"]):
                        yield start + int(k), block[k]
                return
            try:
                block = results[np.array(wanted, dtype=np.int64)] if wanted else results[:0]
                pairs = zip(wanted, block)
            except Exception:
                pairs = one_by_one(wanted)
            yield from ((i, r) for i, r in pairs if isinstance(r, Exception) or r["status"] != 0)

        # Small heaps are read whole; from a big one, only the slices asked for.
        whole = None
        if job_ids is None and heap_size <= 1 << 28:
            try:
                whole = heap_ds[()].tobytes()
            except Exception:  # a damaged chunk: read slice by slice, so that only the rows using it suffer
                whole = None

        def heap(ref):
            offset, size = int(ref[0]), int(ref[1])
            if size == 0:
                return b""
            if offset > heap_size or size > heap_size - offset:  # a damaged reference: never read past the end
                raise ValueError(f"its slice [{offset}, +{size}) lies past the end of /heap ({heap_size} bytes)")
            return whole[offset:offset + size] if whole is not None else heap_ds[offset:offset + size].tobytes()

        def value_of(job_id, row, kind, status):
            if kind == "none":
                return None
            if kind in ("bool", "int"):
                return bool(row["int_value"]) if kind == "bool" else int(row["int_value"])
            if kind == "float":
                return float(row["float_value"])
            stored = f["values"][job_id][()] if row["external"] else None
            if kind == "array":
                if stored is not None:
                    return stored
                dtype, ndim = row["dtype"].decode("ascii", "replace"), int(row["ndim"])
                if dtype not in _ARRAY_DTYPES or ndim > 8:
                    raise ValueError(f"its array has dtype {dtype!r} and {ndim} dimensions, which dynexec never writes")
                shape = tuple(int(d) for d in row["shape"][:ndim])
                if any(d < 0 for d in shape):
                    raise ValueError(f"its array has shape {shape}, with a negative dimension")
                data = heap(row["value"])
                if int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize != len(data):
                    raise ValueError(f"its array of shape {shape} and dtype {dtype} does not fit its {len(data)} bytes")
                return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
            raw = stored.tobytes() if stored is not None else heap(row["value"])
            if kind == "str":
                return raw.decode("utf-8")
            if kind == "bytes":
                return raw
            try:
                return pickle.loads(raw)
            except Exception as exc:
                raise _decode_error(job_id, exc, "result" if status == "ok" else "exception") from exc

        def record(job_id, row):
            rec = {"job_id": job_id, "status": None, "value_kind": None, "value": None,
                   **{k: "" for k in _TEXT_FIELDS}, "submit_time": 0.0, "start_time": 0.0, "end_time": 0.0,
                   "attempts": 0, "decode_error": None}
            if isinstance(row, Exception):
                rec["decode_error"] = f"job {job_id}: row {int(job_id[-10:]) - 1} of /results cannot be read: {row}"
                return rec
            problems = []
            code, kind_code = int(row["status"]), int(row["value_kind"])
            rec["status"], rec["value_kind"] = statuses.get(code), kinds.get(kind_code)
            if rec["status"] is None:
                problems.append(f"its status code {code} is unknown")
            for k in texts:
                try:
                    rec[k] = heap(row[k]).decode("utf-8")
                except Exception as exc:
                    problems.append(f"its {k} cannot be read: {exc}")
            value = lambda: value_of(job_id, row, rec["value_kind"], rec["status"])  # noqa: E731
            if rec["value_kind"] is None:
                problems.append(f"its value kind code {kind_code} is unknown")
                value = None
            _times_and_value(rec, row, problems, value)
            if problems:
                rec["decode_error"] = f"job {job_id}: " + "; ".join(problems)
            return rec

        out = {}
        for i, row in rows():
            job_id = f"{session}-{int(i) + 1:010d}"
            out[job_id] = record(job_id, row)
        return out


# Columns of a version-4 or -5 /results row read as text (a version-5 summary is fixed-size), and the record every reader gets (read_archive, as_frame).
_TABLE_TEXTS = ("error_type", "message", "traceback", "owner", "service", "server", "stdout", "stderr", "function",
             "args", "summary", "label")
_STATUSES = frozenset(("ok", "error", "cancelled", "lost", "killed", "timeout"))
_RECORD_FIELDS = ("job_id", "status", "value_kind", "value", *_TEXT_FIELDS, "function", "args", "summary", "label",
                  "tags", "submit_time", "start_time", "end_time", "attempts", "decode_error")


def read_archive(path: str | os.PathLike, job_ids=None, *, label: str | None = None, tag: str | None = None,
                 as_frame: bool = False):
    """Reads a results archive file with h5py and numpy alone: {job_id: record}, in the order written.

    `path` is one session's file, `<archive>/<session>.h5`; `job_ids` limits the records to those jobs (jobs
    not in the file are left out); `label` and `tag` to the jobs submitted with that label or tag (through
    Executor.options(label=..., tags=[...])): only those columns are read to find them. Each record is a dict
    with job_id, status ("ok", "error", "cancelled", "lost", "killed", "timeout"), value_kind, value,
    error_type, message, traceback, owner, service, server, stdout, stderr (what the job printed), function
    (a Python job's callable), args (its arguments as JSON text, "" if they are not JSON-representable),
    summary (a short printable form of the call), label, tags (a tuple), submit_time, start_time, end_time
    (Unix seconds), attempts and decode_error. `value` is decoded: None, bool, int, float, str, bytes, a
    numpy array with its dtype and shape, a dict or list (value_kind "json"), or for value_kind "pickle" the
    unpickled object (for a failed job, its exception).

    as_frame=True returns a pandas DataFrame instead, one row per job, indexed by job_id, the times as UTC
    datetimes (NaT where unset).

    One bad row never hides the others: a value that cannot be decoded here (its class is not importable, its
    bytes are damaged) leaves that record's `value` None and says why in `decode_error`, naming the job and
    the file (None for a record read whole); its other fields are all there. A row HDF5 cannot read at all
    has status None, as has a row with a damaged string reference (checked against the file first: libhdf5
    1.10 would follow it blindly and crash); with `label` or `tag`, such a row is left out.

    The layout (version 5, cpp/archive/results_archive.hpp and the README) is plain HDF5; files of layout
    version 4 are read too, and of versions 2 and 3 (without the job descriptions). Raises ValueError naming the file if it is
    not such an archive, or if a job ID is not one of its session.
    """
    import h5py

    f = _open_h5(path)
    with f:
        version = f.attrs.get("version")
        if version in (2, 3):
            f.close()
            records = _read_archive_v3(path, job_ids)
            if label is not None or tag is not None:  # those files have no labels
                records = {}
            for rec in records.values():
                rec.update({"function": "", "args": "", "summary": "", "label": "", "tags": ()})
            return _frame(records) if as_frame else records
        try:
            if "results" not in f or "index" not in f or version not in (4, 5):
                raise ValueError(f"no /results and /index of layout version 4 or 5 (version {version!r})")
            session = f.attrs["session"]
            session = session.decode() if isinstance(session, bytes) else str(session)
            results, index = f["results"], f["index"]
        except Exception as exc:
            raise ValueError(f"{path} is not a dynexec results archive: {exc}") from exc
        records = _read_table(f, str(path), session, results, index, job_ids, label, tag)
    return _frame(records) if as_frame else records


def _runs(indices):
    """(start, stop) of each run of consecutive indices, in order."""
    start = prev = None
    for i in indices:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            yield start, prev + 1
        start = prev = i
    if start is not None:
        yield start, prev + 1


def _read_table(f, path, session, results, index, job_ids, label, tag) -> dict[str, dict]:
    import numpy as np

    n = len(results)
    # libhdf5 1.10 follows a string's heap reference blindly (a damaged one crashes this process): the rows
    # whose references do not hold against the file are never handed to it, and read as rows that cannot be.
    try:
        bad = dict(_core.archive_damaged_rows(path))
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    rows = None  # every row
    if job_ids is not None:
        slots = []
        for job_id in job_ids:
            head, _, seq = str(job_id).rpartition("-")
            if not (head and len(seq) == 10 and seq.isdigit() and int(seq) > 0):
                raise ValueError(f"{job_id!r} is not a dynexec job ID")
            if head != session:
                raise ValueError(f"job {job_id} is not of session {session}, whose archive is {path}")
            if int(seq) <= len(index):
                slots.append(int(seq) - 1)
        slots = sorted(set(slots))
        entries = index[np.array(slots, dtype=np.int64)] if slots else np.zeros(0, np.uint64)
        rows = sorted({int(e) - 1 for e in entries if 0 < int(e) <= n})
    if label is not None or tag is not None:
        names = ["label"] if tag is None else ["label", "tags"]
        if bad:  # a damaged row's label cannot be known: it is left out
            rows = [i for i in (range(n) if rows is None else rows) if i not in bad]
            cols = [r for a, b in _runs(rows) for r in results.fields(names)[a:b]]
        else:
            cols = results.fields(names)[()] if rows is None else results.fields(names)[rows] if rows else None
        picked = []
        for k, r in enumerate(cols if cols is not None else []):
            r = r if isinstance(r, np.void) else (r,)
            lab = _text(r[0])
            if label is not None and lab != label:
                continue
            if tag is not None and tag not in _tags(_text(r[1])):
                continue
            picked.append(k if rows is None else rows[k])
        rows = picked

    def read_rows():  # (row index, row or the exception that kept HDF5 from reading it)
        def one_by_one(indices):
            import h5py
            for i in indices:
                try:
                    yield i, results[i]
                except Exception as exc:
                    try:  # a damaged reference in another row may have left HDF5's cache of this file astray
                        with h5py.File(path, "r") as fresh:
                            yield i, fresh["results"][i]
                    except Exception:
                        yield i, exc
        def blocks(wanted):  # a damaged chunk or string: what can be read of it
            for start in range(0, len(wanted), _ROWS_PER_READ):
                part = wanted[start:start + _ROWS_PER_READ]
                try:
                    whole = part[-1] - part[0] + 1 == len(part)
                    yield from zip(part, results[part[0]:part[-1] + 1] if whole else results[list(part)])
                except Exception:
                    yield from one_by_one(part)
        wanted = range(n) if rows is None else rows
        if bad:  # read around the damaged rows, in row order
            pending = []
            for i in wanted:
                if i in bad:
                    yield from blocks(pending)
                    pending = []
                    yield i, ValueError(bad[i])
                else:
                    pending.append(i)
            yield from blocks(pending)
            return
        try:
            block = results[()] if rows is None else results[rows] if rows else []
            yield from zip(wanted, block)
            return
        except Exception:
            pass
        yield from blocks(wanted)

    # Which job each row is, from /index: a row whose job_id is damaged is still named by its job.
    try:
        entries = index[()]
        filled = np.flatnonzero(entries)
        job_of_row = {int(entries[k]) - 1: f"{session}-{int(k) + 1:010d}" for k in filled}
    except Exception:
        job_of_row = {}
    out = {}
    for i, row in read_rows():
        rec = _record_table(f, path, session, int(i), row, job_of_row.get(int(i)))
        key = rec["job_id"]
        while key in out:  # a damaged job_id that repeats another: keep both
            key += "?"
        out[key] = rec
    return out


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return "" if v is None else str(v)


def _record_table(f, path, session, i, row, indexed) -> dict:
    rec = {k: "" for k in _RECORD_FIELDS}
    job_id = indexed or f"<row {i} of {path}>"
    rec.update(status=None, value_kind=None, value=None, tags=(), submit_time=0.0, start_time=0.0, end_time=0.0,
               attempts=0, decode_error=None, job_id=job_id)
    if isinstance(row, Exception):
        rec["decode_error"] = f"job {job_id} in {path}: row {i} of /results cannot be read: {row}"
        return rec
    problems = []
    try:
        stored = _text(row["job_id"])
        if indexed is None:
            rec["job_id"] = job_id = stored
        if stored != job_id:
            problems.append(f"its job_id reads {stored!r}, but /index gives row {i} to job {job_id}")
        elif not job_id.startswith(session + "-"):
            problems.append(f"its job_id {job_id!r} is not of session {session}")
    except Exception as exc:
        problems.append(f"its job_id cannot be read: {exc}")
    for k in ("status", "value_kind"):
        try:
            rec[k] = _text(row[k])
        except Exception as exc:
            problems.append(f"its {k} cannot be read: {exc}")
    if rec["status"] is not None and rec["status"] not in _STATUSES:
        problems.append(f"its status {rec['status']!r} is unknown")
        rec["status"] = None
    for k in _TABLE_TEXTS:
        try:
            rec[k] = _text(row[k])
        except Exception as exc:
            problems.append(f"its {k} cannot be read: {exc}")
    try:
        rec["tags"] = _tags(_text(row["tags"]))
    except Exception as exc:
        problems.append(f"its tags cannot be read: {exc}")
    _times_and_value(rec, row, problems, lambda: _value_table(f, job_id, row, rec["value_kind"], rec["status"]))
    if problems:
        rec["decode_error"] = f"job {job_id} in {path}: " + "; ".join(problems)
    return rec


def _times_and_value(rec, row, problems, value) -> None:
    """A row's times and attempts into `rec`, and its value (`value()`; None: not read); what cannot be read
    goes to `problems`."""
    for k in ("submit_time", "start_time", "end_time"):
        rec[k] = float(row[k])
    rec["attempts"] = int(row["attempts"])
    if value is None:
        return
    try:
        rec["value"] = value()
    except ResultDecodeError as exc:
        problems.append(str(exc).removeprefix(f"job {rec['job_id']}: "))
    except Exception as exc:
        problems.append(f"its value cannot be read: {type(exc).__name__}: {exc}")


def _value_table(f, job_id, row, kind, status):
    if kind == "none":
        return None
    if kind in ("bool", "int"):
        return bool(row["int_value"]) if kind == "bool" else int(row["int_value"])
    if kind == "float":
        return float(row["float_value"])
    where = _text(row["value"]) if kind != "json" else ""
    own = None
    if where.startswith("/values/"):
        if where != f"/values/{job_id}":
            raise ValueError(f"its value points to {where!r}, not to /values/{job_id}")
        own = f[where][()]
    if kind == "array":
        if own is None:
            raise ValueError("its array has no dataset /values/<job_id>")
        return own
    if kind == "json":
        return json.loads(_text(row["value"]))
    if own is not None:
        raw = own if isinstance(own, bytes) else own.tobytes() if hasattr(own, "tobytes") else str(own).encode()
    else:
        raw = bytes(row["value_bytes"])
    if kind == "str":
        return raw.decode("utf-8") if (own is not None or raw) else where
    if kind == "bytes":
        return raw
    if kind != "pickle":
        raise ValueError(f"its value kind {kind!r} is unknown")
    try:
        return pickle.loads(raw)
    except Exception as exc:
        raise _decode_error(job_id, exc, "result" if status == "ok" else "exception") from exc


def _frame(records: dict):
    """read_archive's records as a pandas DataFrame indexed by job_id, times as UTC datetimes."""
    import pandas as pd
    df = pd.DataFrame.from_records(list(records.values()), columns=list(_RECORD_FIELDS))
    for k in ("submit_time", "start_time", "end_time"):
        df[k] = pd.to_datetime(df[k].where(df[k] > 0), unit="s", utc=True)
    return df.set_index("job_id")


def sessions(archive: str | os.PathLike | None = None) -> list[dict]:
    """The sessions in an archive directory (default: default_archive()), oldest first: one dict each with
    session, file, start_time and end_time (ISO 8601 UTC text; end_time "" while it runs or if it did not
    close), user, host, pid, script (the script or notebook path), label (Executor(label=...)),
    dynexec_version, version (of the file's layout) and jobs (results archived). Reads only the files' root
    attributes and sizes; a file that cannot be read is listed with its `error`."""
    import h5py
    directory = Path(archive) if archive is not None else default_archive()
    out = []
    for file in sorted(directory.glob("*.h5")):
        info = {"session": file.stem, "file": str(file), "start_time": "", "end_time": "", "user": "", "host": "",
                "pid": 0, "script": "", "label": "", "dynexec_version": "", "version": None, "jobs": 0, "error": None}
        try:
            with h5py.File(file, "r") as f:
                for k, v in f.attrs.items():
                    if k in info and k not in ("file", "jobs", "error"):
                        info[k] = v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
                if "results" in f:
                    results = f["results"]  # versions 2 and 3 have a row per job ID, "absent" (0) ones too
                    info["jobs"] = len(results) if info["version"] in (4, 5) else int(
                        (results.fields("status")[()] != 0).sum())
        except Exception as exc:
            info["error"] = f"{file}: {type(exc).__name__}: {exc}"
        out.append(info)
    return out


def find(job_id: str, archive: str | os.PathLike | None = None) -> Result:
    """The results finder: the archived result of `job_id`, also after the process that ran it has exited.

    `archive` is the directory given to the Executor (default: default_archive()). The Result has every
    archived field, also what the job was (function, args, summary, label, tags). Reads one /index entry and
    one row (well under 1 ms). Raises ResultNotFoundError if the archive has no such result, InvalidJobError
    for a malformed ID, ArchiveError if the file cannot be read (naming it; a file of an older layout says
    so: dynexec.read_archive() reads those).
    """
    directory = Path(archive) if archive is not None else default_archive()
    r = _core.find(directory, job_id)
    if r is None:
        raise ResultNotFoundError(f"no result for job {job_id} in archive {directory}")
    return Result.from_core(r)


def _value(self):
    error = self.__dict__.get("decode_error")
    if error is not None:
        raise error
    return self.__dict__["value"]


def _set_value(self, value):  # only the dataclass __init__ sets it
    self.__dict__["value"] = value


# `value` raises the decode error instead of passing for a None: the archive never says what it does not know.
Result.value = property(_value, _set_value, doc="The job's return value; raises ResultDecodeError if it cannot be "
                                                "decoded in this process.")
