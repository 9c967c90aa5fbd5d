"""Runs one pickled Python job inside a compute server. Called from C++ with the GIL held."""
import io
import os
import json
import pickle
import struct
import socket
import sys
import traceback

import cloudpickle
import numpy as np

from ._pickling import Instance, dumps

# dtypes the archive stores natively; other arrays are pickled like any value.
_NATIVE_DTYPES = frozenset("f8 f4 i8 i4 i2 i1 u8 u4 u2 u1 b1".split())


def type_name(exc_type):
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def _error(exc, message=None):
    try:
        payload = cloudpickle.dumps(exc)
    except Exception:  # an exception that cannot travel: its type, text and traceback still do
        payload = b""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ("error", type_name(type(exc)), message or str(exc), tb, payload)


# Files whose frames load a job (unpickle it) rather than run it: an ImportError with only these in its
# traceback is the job's pickle naming a module this server lacks.
_LOADERS = frozenset((__file__, pickle.__file__, cloudpickle.cloudpickle.__file__,
                      sys.modules[Instance.__module__].__file__))


def _import_error(exc: ImportError) -> ImportError:
    """`exc` (of the same type) saying which module this compute server cannot import, naming the server; `exc`
    itself for an ImportError the job's own code raised that is no missing module."""
    name = exc.name or "?"
    where = f"compute server {socket.gethostname()} (pid {os.getpid()})"
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    if not all(f in _LOADERS or f.startswith("<frozen") for f in frames):  # raised while the job ran
        if not isinstance(exc, ModuleNotFoundError):
            return exc
        text = (f"module {name!r} cannot be imported on {where}, where the job imports it ({exc}). It is not "
                f"installed there: install it on every host (pip install it there)")
    else:
        text = (f"module {name!r} cannot be imported on {where}, so the job cannot be unpickled there ({exc}). It "
                f"is not installed there, and was not shipped with the job because on the client it is an "
                f"installed package (only modules from the client's own directories are shipped by value): "
                f"install it on every host (pip install it there)")
    try:
        new = type(exc)(text, name=exc.name, path=exc.path)
    except Exception:  # a subclass with a constructor of its own
        new = ImportError(text, name=exc.name, path=exc.path)
    return new.with_traceback(exc.__traceback__)


_functions: dict[bytes, object] = {}  # pickled callable -> callable: each is unpickled once per server
_templates: dict[bytes, list] = {}  # template of a by-value function -> idle unpickled copies (Instance)
_MAX_FUNCTIONS = 1024
unpickled = 0  # callables and templates unpickled by this process (what the caches save shows here)


def _function(blob: bytes):
    global unpickled
    fn = _functions.get(blob)
    if fn is None:
        if len(_functions) >= _MAX_FUNCTIONS:
            _functions.clear()
        fn = _functions[blob] = pickle.loads(blob)
        unpickled += 1
    return fn


def _call_template(template: bytes, state: bytes, args, kwargs, loads=pickle.loads):
    """Runs a by-value function: a cached copy of its template with this job's captured mutable values bound.
    A copy serves one job at a time; jobs that run at once (several slots) take copies of their own."""
    global unpickled
    pool = _templates.get(template)
    if pool is None:
        if len(_templates) >= _MAX_FUNCTIONS:
            _templates.clear()
        pool = _templates.setdefault(template, [])
    try:
        copy = pool.pop()
    except IndexError:
        copy = Instance(template)
        unpickled += 1
    try:
        fn = copy.bind(loads(state) if state else ())
        return fn, fn(*args, **kwargs)
    finally:
        copy.unbind()
        pool.append(copy)


_shared: dict = {}  # key -> an object given to Executor.scatter, unpickled once in this process
_parts: dict = {}  # key -> a large callable part (bytes)
_MAX_KEPT = 8


class _Objects:
    """Unpickles a payload part whose large objects travelled apart (dynexec.objects.Collector)."""

    def __init__(self, objects: dict):
        self.objects = objects

    def loads(self, data):
        u = pickle.Unpickler(io.BytesIO(data))
        u.persistent_load = self.load
        return u.load()

    def load(self, pid):
        tag, key, how = pid
        if tag != "dynexec.object":
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        try:
            data = self.objects[key]
        except KeyError:
            raise RuntimeError(f"the job names object {key}, which did not come with it") from None
        if how == "shared":  # shared by the jobs of this process, as Executor.scatter says
            return _kept(_shared, key, lambda: pickle.loads(data))
        if how == "part":  # a callable's pickle: one object, so that the caches above find it at once
            return _kept(_parts, key, lambda: bytes(data))
        if how == "bytes":  # an argument: its own copy, not kept here once the head says Forget
            return bytes(data)
        _, dtype, shape = how  # a fresh copy: the job may change it, as it could without objects
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def _kept(cache: dict, key, make):
    obj = cache.get(key)
    if obj is None:
        if len(cache) >= _MAX_KEPT:
            cache.pop(next(iter(cache)))
        obj = cache[key] = make()
        if isinstance(obj, np.ndarray):
            obj.flags.writeable = False
    return obj


class _JobStream(io.TextIOBase):
    """sys.stdout or sys.stderr of a server process that captures output: what a thread running a job
    writes goes to that job's output (dynexec._core keeps it per job); other threads write where the
    replaced stream did."""

    def __init__(self, number: int, original):
        self._number, self._original = number, original
        self.buffer = _JobBuffer(number, getattr(original, "buffer", None))

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        # surrogateescape: undecodable bytes that Python smuggled in as surrogates go back as bytes; the
        # server turns anything that is not valid UTF-8 into U+FFFD.
        if _core._job_write(self._number, s.encode("utf-8", "surrogateescape")):
            return len(s)
        return self._original.write(s)

    def flush(self):
        if not _core._job_capturing():  # a job's writes are not buffered here
            self._original.flush()

    def isatty(self):
        return False if _core._job_capturing() else self._original.isatty()

    def fileno(self):  # e.g. a subprocess given sys.stdout: with one slot, fd 1 is captured too
        return self._original.fileno()

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "surrogateescape"

    def __getattr__(self, name):  # anything else (line_buffering, name, ...) as the replaced stream has it
        return getattr(self._original, name)


class _JobBuffer(io.RawIOBase):
    """sys.stdout.buffer for bytes: a job's go to its output, others' to the replaced buffer."""

    def __init__(self, number: int, original):
        self._number, self._original = number, original

    def write(self, b):
        data = bytes(b)
        if _core._job_write(self._number, data):
            return len(data)
        if self._original is None:
            raise io.UnsupportedOperation("this stream has no binary buffer")
        return self._original.write(data)

    def writable(self):
        return True

    def flush(self):
        if self._original is not None and not _core._job_capturing():
            self._original.flush()


_core = None  # dynexec._core, once a job runs in a server that captures output
_streams_checked = False


def _install_streams() -> None:
    """Once per server process, on its first job: if its compute server captures output, print() and
    sys.stderr writes of each job go to that job (per thread, so jobs in other slots do not mix)."""
    global _core, _streams_checked
    from . import _core as core

    _streams_checked = True  # capture is a property of the process: it does not change later

    if core._job_capturing():
        _core = core
        sys.stdout = _JobStream(1, sys.stdout)
        sys.stderr = _JobStream(2, sys.stderr)


_PLAIN = frozenset((type(None), bool, float, bytes))
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _is_plain(value) -> bool:
    """A value the archive stores as itself (its kind, not a pickle), so every HDF5 tool reads it: None, bool,
    float, bytes, an int of 64 bits, a str that is UTF-8 (no lone surrogates). Exact types only: a subclass
    (IntEnum, a str subclass) keeps its class by being pickled."""
    t = type(value)
    if t in _PLAIN:
        return True
    if t is int:
        return _INT64[0] <= value <= _INT64[1]
    if t is str:
        if value.isascii():
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return False


_JSON_MAX = 1 << 20  # bigger containers are pickled: the JSON text lives in the results table's row


def _json_safe(value, depth=0) -> bool:
    """Whether json.loads(json.dumps(value)) gives back an equal value of the same types: dicts with str keys,
    lists, and None, bool, int, finite float and str (exact types, no lone surrogates)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return True
    if t is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if depth > 64:
        return False
    if t is list:
        return all(_json_safe(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and _json_safe(v, depth + 1) for k, v in value.items())
    return False


def json_text(value) -> str | None:
    """The JSON text the archive keeps of a JSON-representable dict or list (value_kind "json"); None for
    anything else, which is pickled."""
    if type(value) not in (dict, list) or not _json_safe(value):
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
        data = text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return None
    return text if len(data) <= _JSON_MAX and "\0" not in text else None


def json_pickle(text: str) -> bytes:
    """The pickle of the call json.loads(text): what the C++ archive recognises and keeps as JSON text
    (kJsonPrefix in cpp/archive/results_archive.cpp); unpickling it gives the value back."""
    data = text.encode("utf-8")
    return b"\x80\x02cjson\nloads\nX" + struct.pack("<I", len(data)) + data + b"\x85R."


def run(payload, objects=None):
    """Returns ("array", ndarray) | ("value", a plain value) | ("pickle", bytes)
    | ("error", type, message, traceback, pickled exception).

    `payload` pickles (callable part, pickled (args, kwargs)); the callable part is a pickled callable, or a
    by-value function's (template, pickled state); see dynexec.executor.job_payload. `objects`: the large
    objects it names (key -> memoryview), see dynexec.objects."""
    if not _streams_checked:
        _install_streams()
    fn = None
    try:
        loads = _Objects(objects).loads if objects else pickle.loads
        blob, arguments = loads(payload)
        args, kwargs = loads(arguments)
        if type(blob) is tuple:
            fn, value = _call_template(*blob, args, kwargs, loads)
        else:
            fn = _function(blob)
            value = fn(*args, **kwargs)
    except ImportError as exc:
        return _error(_import_error(exc))
    except BaseException as exc:  # the job's failure is its result, whatever it raised
        return _error(exc)
    if isinstance(value, np.ndarray) and f"{value.dtype.kind}{value.dtype.itemsize}" in _NATIVE_DTYPES and value.ndim > 0:
        return ("array", value)
    if _is_plain(value):
        return ("value", value)
    text = json_text(value)
    if text is not None:
        return ("pickle", json_pickle(text))
    try:
        return ("pickle", dumps(value))
    except BaseException as exc:
        return _error(exc, f"the result of {getattr(fn, '__qualname__', fn)!s} cannot be pickled: {exc}")
