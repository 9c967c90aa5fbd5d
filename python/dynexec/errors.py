"""dynexec's exceptions. Those raised by the C++ core are defined there and re-exported here."""
from ._core import ArchiveError, InvalidJobError, ShutDownError, UnknownServiceError

__all__ = [
    "ArchiveError",
    "InvalidJobError",
    "RemoteError",
    "ResultNotFoundError",
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
