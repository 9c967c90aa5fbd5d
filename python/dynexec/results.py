"""Results as the archive keeps them, and the results finder."""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

from . import _core
from .errors import RemoteError, ResultNotFoundError, ServerLostError, _RemoteTraceback


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
    status: str  # "ok", "error", "cancelled" or "lost"
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
                   r.submit_time, r.start_time, r.end_time, r.attempts, r.location, payload)

    def exception(self) -> BaseException | None:
        """The job's exception, with its own type and the remote traceback as its cause; None if it succeeded."""
        if self.status == "ok":
            return None
        if self.status == "lost":
            return ServerLostError(self.message)
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
