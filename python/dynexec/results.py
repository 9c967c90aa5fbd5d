"""Results as the archive keeps them, and the results finder."""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

from . import _core
from .errors import (BrokenExecutorError, JobKilledError, JobTimeoutError, RemoteError, ResultNotFoundError,
                     ServerDiedError, ServerLostError, _RemoteTraceback)


def default_archive() -> Path:
    """$DYNEXEC_ARCHIVE, else $XDG_DATA_HOME/dynexec/archive (~/.local/share/dynexec/archive)."""
    if os.environ.get("DYNEXEC_ARCHIVE"):
        return Path(os.environ["DYNEXEC_ARCHIVE"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "dynexec" / "archive"


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


@dataclasses.dataclass(frozen=True)
class Result:
    """One job's result. `value` is the return value; `exception()` rebuilds the failure."""

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
    _error_payload: bytes = dataclasses.field(default=b"", repr=False)

    @classmethod
    def from_core(cls, r: _core.Result) -> Result:
        raw, kind = r.raw_value, r.value_kind
        value, payload = None, b""
        if r.status == "error":
            payload = raw if kind == "pickle" else b""
        elif kind == "pickle":
            value = pickle.loads(raw)
        else:
            value = raw
        return cls(r.job_id, r.status, value, r.error_type, r.message, r.traceback, r.owner, r.service, r.server,
                   r.submit_time, r.start_time, r.end_time, r.attempts, r.location, r.stdout, r.stderr, payload)

    def exception(self) -> BaseException | None:
        """The job's exception, with its own type and the remote traceback as its cause; None if it succeeded."""
        if self.status == "ok":
            return None
        if self.status == "lost":
            kind = {"ServerDiedError": ServerDiedError, "BrokenExecutor": BrokenExecutorError}.get(self.error_type)
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
        if not isinstance(exc, BaseException) and self.error_type in _NATIVE_ERRORS:
            exc = _NATIVE_ERRORS[self.error_type](f"{self.service}: {self.message}")
        if not isinstance(exc, BaseException):
            exc = RemoteError(self.error_type, self.message, self.traceback)
        if self.traceback:
            exc.__cause__ = _RemoteTraceback(self.traceback)
        return exc


def read_archive(path: str | os.PathLike, job_ids=None) -> dict[str, dict]:
    """Reads a results archive file with h5py and numpy alone: {job_id: record}, in job order.

    `path` is one session's file, `<archive>/<session>.h5`; `job_ids` limits the records to those jobs
    (jobs not in the file are left out). Each record is a dict with job_id, status ("ok", "error",
    "cancelled", "lost"), value_kind, value, error_type, message, traceback, owner, service, server,
    submit_time, start_time, end_time (Unix seconds) and attempts. `value` is decoded: None, bool, int,
    float, str, bytes, a numpy array with its dtype and shape, or for value_kind "pickle" the unpickled
    object (for a failed job its pickled exception, left as bytes if it cannot be unpickled here).

    The file is plain HDF5 (the layout is in cpp/archive/results_archive.hpp): /results holds a row per
    job (row = sequence number - 1), texts and small values are (offset, size) slices of /heap, and
    values over 64 KiB are datasets /values/<job_id>. Raises ValueError if the file is not such an
    archive, or if a job ID is not one of its session.
    """
    import h5py
    import numpy as np

    def names(field):  # code -> name, from the enum type the file declares
        return {v: k for k, v in h5py.check_enum_dtype(field).items()}

    with h5py.File(path, "r") as f:
        if "results" not in f or f.attrs.get("version") != 2:
            raise ValueError(f"{path} is not a dynexec results archive (layout version 2)")
        session = f.attrs["session"]
        session = session.decode() if isinstance(session, bytes) else str(session)
        results, heap_ds = f["results"], f["heap"]
        statuses, kinds = names(results.dtype["status"]), names(results.dtype["value_kind"])
        if job_ids is None:
            rows = results[()]
            index = np.flatnonzero(rows["status"])
            rows = rows[index]
        else:
            wanted = set()
            for job_id in job_ids:
                head, _, seq = str(job_id).rpartition("-")
                if not (head and len(seq) == 10 and seq.isdigit() and int(seq) > 0):
                    raise ValueError(f"{job_id!r} is not a dynexec job ID")
                if head != session:
                    raise ValueError(f"job {job_id} is not of session {session}, whose archive is {path}")
                if int(seq) <= len(results):
                    wanted.add(int(seq) - 1)
            index = np.array(sorted(wanted), dtype=np.int64)
            rows = results[index] if len(index) else results[:0]
            keep = rows["status"] != 0
            index, rows = index[keep], rows[keep]
        # Small heaps are read whole; from a big one, only the slices asked for.
        whole = heap_ds[()].tobytes() if job_ids is None and heap_ds.size <= 1 << 28 else None

        def heap(ref):
            offset, size = int(ref[0]), int(ref[1])
            if size == 0:
                return b""
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
                shape = tuple(int(d) for d in row["shape"][:int(row["ndim"])])
                return np.frombuffer(heap(row["value"]), dtype=row["dtype"].decode()).reshape(shape).copy()
            raw = stored.tobytes() if stored is not None else heap(row["value"])
            if kind == "str":
                return raw.decode("utf-8")
            if kind == "bytes":
                return raw
            try:
                return pickle.loads(raw)
            except Exception:
                if status == "ok":
                    raise
                return raw  # an exception whose class is not importable here

        out = {}
        for i, row in zip(index, rows):
            job_id = f"{session}-{int(i) + 1:010d}"
            status, kind = statuses[int(row["status"])], kinds[int(row["value_kind"])]
            out[job_id] = {
                "job_id": job_id, "status": status, "value_kind": kind, "value": value_of(job_id, row, kind, status),
                **{k: heap(row[k]).decode("utf-8")
                   for k in ("error_type", "message", "traceback", "owner", "service", "server")},
                "submit_time": float(row["submit_time"]), "start_time": float(row["start_time"]),
                "end_time": float(row["end_time"]), "attempts": int(row["attempts"]),
            }
        return out


def find(job_id: str, archive: str | os.PathLike | None = None) -> Result:
    """The results finder: the archived result of `job_id`, also after the process that ran it has exited.

    `archive` is the directory given to the Executor (default: default_archive()).
    Raises ResultNotFoundError if the archive has no such result, InvalidJobError for a malformed ID.
    """
    directory = Path(archive) if archive is not None else default_archive()
    r = _core.find(directory, job_id)
    if r is None:
        raise ResultNotFoundError(f"no result for job {job_id} in archive {directory}")
    return Result.from_core(r)
