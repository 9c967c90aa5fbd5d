"""Runs one pickled Python job inside a compute server. Called from C++ with the GIL held."""
import pickle
import traceback

import cloudpickle
import numpy as np

from ._pickling import dumps

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


_functions: dict[bytes, object] = {}  # pickled callable -> callable: each is unpickled once per server
_MAX_FUNCTIONS = 1024


def _function(blob: bytes):
    fn = _functions.get(blob)
    if fn is None:
        if len(_functions) >= _MAX_FUNCTIONS:
            _functions.clear()
        fn = _functions[blob] = pickle.loads(blob)
    return fn


def run(payload):
    """Returns ("array", ndarray) | ("pickle", bytes) | ("error", type, message, traceback, pickled exception).

    `payload` pickles (pickled callable, args, kwargs); see dynexec.executor.job_payload."""
    try:
        blob, args, kwargs = pickle.loads(payload)
        fn = _function(blob)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # the job's failure is its result, whatever it raised
        return _error(exc)
    if isinstance(value, np.ndarray) and f"{value.dtype.kind}{value.dtype.itemsize}" in _NATIVE_DTYPES and value.ndim > 0:
        return ("array", value)
    try:
        return ("pickle", dumps(value))
    except BaseException as exc:
        return _error(exc, f"the result of {getattr(fn, '__qualname__', fn)!s} cannot be pickled: {exc}")
