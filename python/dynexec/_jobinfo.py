"""What each job was and what each session was, as the archive records them (see README "The archive")."""
from __future__ import annotations

import json
import math
import os
import reprlib
import sys

_SUMMARY_MAX = 95  # UTF-8 bytes of a job's printable summary: the archive's summary column holds 95
_ARGS_MAX = 64 * 1024  # bytes of a job's arguments as JSON text; bigger ones are only summarised

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(', ', ': ')).encode
_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 40, 40, 6, 6, 3


def function_name(fn) -> str:
    """"module.qualname" of a callable (a functools.partial: of the function it wraps)."""
    inner = getattr(fn, "func", None)
    if inner is not None and callable(inner) and not hasattr(fn, "__qualname__"):
        fn = inner
    name = getattr(fn, "__qualname__", None) or getattr(type(fn), "__qualname__", type(fn).__name__)
    module = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", None)
    return f"{module}.{name}" if module else name


def _json_args(args, kwargs) -> str:
    from ._runner import _json_safe
    call = {"args": list(args), "kwargs": kwargs}
    if not (all(type(k) is str for k in kwargs) and _json_safe(call)):
        return ""
    try:
        text = json.dumps(call, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        return ""
    return text if len(text) <= _ARGS_MAX else ""


def summary(name: str, args, kwargs) -> str:
    """A short printable form of the call, e.g. "sweep.run(0.5, n=10)"."""
    parts = [_repr.repr(a) for a in args] + [f"{k}={_repr.repr(v)}" for k, v in kwargs.items()]
    text = f"{name.rpartition('.')[2] if name else '?'}({', '.join(parts)})"
    text = " ".join(text.split())  # one line: a numpy array's repr has newlines
    if len(text.encode("utf-8", "surrogatepass")) <= _SUMMARY_MAX:
        return text
    cut = text[:_SUMMARY_MAX - 4]
    while len(cut.encode("utf-8", "surrogatepass")) > _SUMMARY_MAX - 4:
        cut = cut[:-1]
    return cut + "...)"


def tags_text(tags) -> str:
    return json.dumps(list(tags), ensure_ascii=False) if tags else ""


_SHORT = 40  # a str argument up to this long is its own summary (reprlib would not shorten it)
_finite = math.isfinite


def _fast(args, kwargs, label, tags, function) -> tuple | None:
    """describe() for the common call: a few positional ints, floats, bools, Nones and short ASCII strs, no
    kwargs, label or tags; about 4x cheaper than the general path (a submit pays it on the client's thread)."""
    if kwargs or label or tags or len(args) > 6:
        return None
    for a in args:
        t = type(a)
        if t is int or t is bool or a is None:
            continue
        if t is float:
            if not _finite(a):
                return None
            continue
        if t is str and len(a) <= _SHORT and a.isascii() and a.isprintable():
            continue
        return None
    parts = ", ".join(map(repr, args))
    name = function.rpartition(".")[2] if function else "?"
    text = f"{name}({parts})"  # ASCII: a character a byte
    if len(text) > _SUMMARY_MAX:
        return None
    return (function, f'{{"args": {_dumps(list(args))}, "kwargs": {{}}}}', text, "", "")


def describe(function: str, args, kwargs, label: str, tags) -> tuple[str, str, str, str, str]:
    """(function, args as JSON text or "", summary, label, tags as a JSON array or ""), as _core takes it: UTF-8
    texts (a lone surrogate in a repr is escaped)."""
    if function.isascii():
        fast = _fast(args, kwargs, label, tags, function)
        if fast is not None:
            return fast
    return (_utf8(function), _json_args(args, kwargs), _utf8(summary(function, args, kwargs)), label or "",
            tags_text(tags))


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_label(label, tags) -> tuple[str, tuple[str, ...]]:
    """The label and tags of job options, checked: a str and an iterable of str (never a bare str)."""
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be a list of str, not one str (write tags=[...])")
    tags = tuple(tags or ())
    bad = [t for t in tags if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tags must be str, got {bad[0]!r}")
    for text, what in [(label or "", "label")] + [(t, "tag") for t in tags]:
        if "\0" in text or _utf8(text) != text:
            raise ValueError(f"a {what} must be UTF-8 text without NUL characters: {text!r}")
    return label or "", tags


def script_path() -> str:
    """The script or notebook this process runs: a notebook's path where Jupyter says it, else sys.argv[0]."""
    main = sys.modules.get("__main__")
    for key in ("__vsc_ipynb_file__", "__session__"):  # VS Code; JupyterLab >= 4 sets __session__ to the path
        value = getattr(main, key, None)
        if isinstance(value, str) and value:
            return value
    if os.environ.get("JPY_SESSION_NAME"):
        return os.environ["JPY_SESSION_NAME"]
    if "ipykernel" in sys.modules:
        return "<notebook>"
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-"):
        return "<interactive>" if not argv0 else f"<{argv0}>"
    return os.path.abspath(argv0)


def session_info(label) -> list[tuple[str, str]]:
    """The root attributes an Executor adds to its session's archive file."""
    from . import __version__
    return [("script", script_path()), ("label", label or ""), ("dynexec_version", __version__),
            ("python", sys.version.split()[0])]
