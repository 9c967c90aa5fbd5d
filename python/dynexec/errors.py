"""dynexec's exceptions. Those raised by the C++ core are defined there and re-exported here."""
from concurrent.futures import BrokenExecutor as _BrokenExecutor

from ._core import ArchiveError, InvalidJobError, ShutDownError, UnknownServiceError

__all__ = [
    "ArchiveError",
    "BrokenExecutorError",
    "InvalidJobError",
    "JobKilledError",
    "JobTimeoutError",
    "RemoteError",
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
