"""dynexec's exceptions. Those raised by the C++ core are defined there and re-exported here."""
from concurrent.futures import BrokenExecutor as _BrokenExecutor

from ._core import ArchiveError, InvalidJobError, ShutDownError, UnknownServiceError

__all__ = [
    "ArchiveError",
    "BrokenExecutorError",
    "CommandError",
    "InvalidJobError",
    "JobKilledError",
    "JobTimeoutError",
    "RemoteError",
    "ResultDecodeError",
    "ResultNotFoundError",
    "ServerDiedError",
    "ServerLostError",
    "ShutDownError",
    "UnknownServiceError",
]


class ServerLostError(RuntimeError):
    """The job was on compute servers that vanished more often than max_attempts allows."""


class ResultNotFoundError(LookupError):
    """The archive holds no result for this job ID (yet)."""


class ResultDecodeError(ValueError):
    """A job's result is archived but cannot be decoded here: its class cannot be imported in this process,
    its bytes are damaged, or a native service returned a string that is not UTF-8.

    `job_id` names the job; `missing` the module or class this process could not import (None if that was not
    the reason). It is about the job's result, never its call: the job ran.
    """

    def __init__(self, message, job_id="", missing=None):
        super().__init__(message)
        self.job_id = job_id
        self.missing = missing


def _decode_error(job_id: str, exc: BaseException, what: str = "result") -> ResultDecodeError:
    """The ResultDecodeError for `exc`, raised while unpickling the `what` of job `job_id`."""
    missing = None
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        missing = exc.name
        reason = f"module {missing!r} cannot be imported in this process"
    elif isinstance(exc, (AttributeError, ImportError)):  # pickle: "Can't get attribute 'C' on <module 'm' ...>"
        missing = getattr(exc, "name", None) or str(exc)
        reason = f"its class cannot be found in this process ({type(exc).__name__}: {exc})"
    else:
        reason = f"its bytes cannot be unpickled ({type(exc).__name__}: {exc})"
    err = ResultDecodeError(f"job {job_id}: its {what} cannot be unpickled here: {reason}. The job itself ran; it "
                            f"is its {what}, not its call, that this process cannot decode "
                            f"(make {missing or 'its module'} importable here to read it)",
                            job_id, missing)
    err.__cause__ = exc
    return err


class RemoteError(Exception):
    """A job failed with an exception that could not be sent back as itself."""

    def __init__(self, type_name, message, traceback):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class _RemoteTraceback(Exception):
    """Carries the traceback of the failed job, shown as the cause of the re-raised exception."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class ServerDiedError(ServerLostError):
    """The job was running each time its compute server's process ended (a signal, an exit code), as often as
    max_attempts allows: the job itself most likely ends them (a segfault, os._exit, memory)."""


class JobKilledError(RuntimeError):
    """The job was stopped while it ran, by `future.kill()`."""


class JobTimeoutError(JobKilledError):
    """The job ran past its time limit (`ex.options(time_limit=...)`) and was stopped."""


class BrokenExecutorError(_BrokenExecutor):
    """No compute server can be had (they keep dying at start, or all were lost): like BrokenProcessPool,
    pending jobs fail with it and new ones are refused."""


class CommandError(RuntimeError):
    """A command job (Executor.submit_command, `dynexec submit -- ...`) exited non-zero or was ended by a
    signal. `returncode`: its exit code, or -N for signal N (as subprocess gives it); None if unknown.
    What it printed is the job's output (future.stdout/.stderr, Result.stdout/.stderr)."""

    def __init__(self, message, returncode=None):
        super().__init__(message)
        self.returncode = returncode
