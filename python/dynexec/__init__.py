"""dynexec: submit compute-intensive jobs from Python; every result archived in HDF5 by job ID.

    import dynexec
    with dynexec.Executor() as ex:
        f = ex.submit(pow, 2, 10)
        print(f.result(), f.job_id)
    print(dynexec.find(f.job_id).value)
"""
import os as _os
from pathlib import Path as _Path

# A live archive is open for writing in this process; h5py may read it alongside only without file locks.
_os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

from . import _core
from .errors import (ArchiveError, BrokenExecutorError, CommandError, InvalidJobError, JobKilledError, JobTimeoutError,
                     RemoteError, ResultDecodeError, ResultNotFoundError, ServerDiedError, ServerLostError, ShutDownError,
                     UnknownServiceError)
from .executor import POLICIES, Executor, JobFuture, _live_executors, _plugins
from .notify import NotifyConfig
from .progress import as_completed, wait
from .results import Result, default_archive, find, read_archive, sessions

__version__ = "0.1.0"

__all__ = [
    "POLICIES", "ArchiveError", "BrokenExecutorError", "CommandError", "Executor", "InvalidJobError", "JobFuture",
    "JobKilledError", "JobTimeoutError", "NotifyConfig", "RemoteError", "Result", "ResultDecodeError",
    "ResultNotFoundError", "ServerDiedError", "ServerLostError", "ShutDownError", "UnknownServiceError",
    "as_completed", "default_archive", "find", "get_include", "load_services", "read_archive", "services", "sessions", "wait",
]


def load_services(path) -> list[str]:
    """Loads a native service plugin (a shared library defining DYNEXEC_SERVICES); returns the names it adds.

    Every compute server of this process offers them from then on.
    """
    path = str(_Path(path).resolve())
    names = _core.load_services(path)
    _plugins[path] = names
    for ex in list(_live_executors):
        if hasattr(ex._engine, "load_plugin"):  # its servers, in this process or others, offer them too
            ex._engine.load_plugin(path, names, 30.0)
    return names


def services() -> dict:
    """The native services this process offers: name -> {doc, params}."""
    return _core.services()


def get_include() -> str:
    """Directory of <dynexec/service.hpp>, for building service plugins."""
    return str(_Path(__file__).parent / "include")
