"""Large objects sent once to each compute server that needs them, not once per job.

A job's payload names each large object by a key (a hash of its content) instead of carrying it; the
object itself travels as a job parameter "@<key>" (cpp/common/objects.hpp), which the C++ layers send to
the head, and from the head to each server, once: a peer that has it already gets None and fills it in.

- `Executor.scatter(obj)` returns a `Shared` handle: pass it to jobs (as an argument, or inside one) and each
  job gets `obj` itself, unpickled once per server process and shared by the jobs there (treat it as
  read-only; an array comes read-only). Held until `handle.release()`, or the handle is garbage.
- Without asking, a large part of a payload (bytes, a numpy array of at least THRESHOLD bytes, in the
  arguments or in what a function captured, or the pickled function itself) travels the same way; each
  job still gets its own copy, as without it. Such an object is let go GRACE seconds after its last job.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import threading
import time
import weakref

import cloudpickle
import numpy as np

from . import _core, _pickling

THRESHOLD = 1 << 20  # bytes: a part of a payload at least this large travels once per process
GRACE = 10.0  # seconds an automatic object stays held after its last job, for the next one
_KEY_DIGITS = _core.OBJECT_KEY_SIZE
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_MARK = b"dynexec.objects"  # in a pickle that holds a Shared handle (its class's module)


try:  # xxh3: a 128-bit hash at memory speed (python3-xxhash); sha1 where it is missing (keys differ, that is all)
    from xxhash import xxh3_128 as _hash
except ImportError:  # pragma: no cover
    def _hash():
        return hashlib.sha1(usedforsecurity=False)


def key_of(*parts) -> str:
    """The key of an object: the hash of its bytes (a content address, not a secret)."""
    h = _hash()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:_KEY_DIGITS]


def _buffer(data) -> np.ndarray:
    """`data` as a uint8 array over the same memory (handed to the core without a copy)."""
    return np.frombuffer(data, dtype=np.uint8)


class Shared:
    """A handle to an object given to Executor.scatter: jobs that get it as an argument (or inside one) get
    the object. The object is sent to each compute server once, and kept there while the handle is held."""

    __slots__ = ("key", "nbytes", "_data", "_holder", "__weakref__")

    def __init__(self, obj, holder: Holder):
        try:
            data = cloudpickle.dumps(obj, protocol=_PROTOCOL)
        except Exception as exc:
            from .errors import InvalidJobError
            raise InvalidJobError(f"cannot scatter {type(obj).__qualname__}: it cannot be pickled "
                                  f"({type(exc).__name__}: {exc})") from exc
        self.key, self.nbytes, self._data, self._holder = key_of(data), len(data), data, holder
        holder.hold_shared(self)

    def release(self) -> None:
        """Jobs submitted from now on may not use it; servers drop it once no job needs it."""
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.release_shared(self.key)

    def __reduce__(self):  # a job payload carries it as a persistent id (Collector); elsewhere, never its data
        return (_unresolved, (self.key,))

    def __repr__(self):
        return f"<dynexec.Shared {self.key} {self.nbytes} bytes{'' if self._holder else ' released'}>"


class Collector:
    """Pickles one job's payload, leaving its large objects out: `objects` gets their data (key -> uint8
    array or bytes), `auto` the keys of those not explicitly shared. Without a holder (no objects wanted, or
    nothing large) a payload is exactly what plain pickling makes."""

    __slots__ = ("holder", "objects", "auto")

    def __init__(self, holder: Holder | None):
        self.holder = holder
        self.objects: dict = {}
        self.auto: list = []

    def dump(self, obj) -> bytes:
        """_pickling.dumps(obj), again with the large objects out if it holds any."""
        if self.holder is None or not _big_item(obj):
            out = _pickling.dumps(obj)
            if self.holder is None or not needs_collecting(out):
                return out
        buf = io.BytesIO()
        try:
            _Collecting(buf, self).dump(obj)
            out = buf.getvalue()
            if b"__main__" not in out and not (_pickling._shipped and any(n in out for n in _pickling._shipped)):
                return out
        except Exception:
            pass
        buf = io.BytesIO()
        _CloudCollecting(buf, self).dump(obj)
        return buf.getvalue()

    def payload(self, blob, arguments: bytes) -> bytes:
        """The payload of (callable part, pickled arguments); a large callable part (its pickle, or a template)
        travels as an object."""
        refs = {}
        if self.holder is not None:
            part = blob[0] if type(blob) is tuple else blob
            if type(part) is bytes and len(part) >= THRESHOLD:
                refs[id(part)] = self.big(part)
        if not refs:
            return pickle.dumps((blob, arguments), protocol=_PROTOCOL)
        buf = io.BytesIO()
        _Outer(buf, refs).dump((blob, arguments))
        return buf.getvalue()

    def merge(self, other: Collector) -> None:
        """Adds what `other` collected (a map's callable part, collected once for all its jobs)."""
        for k, v in other.objects.items():
            if k not in self.objects:
                self.objects[k] = v
                if k in other.auto:
                    self.auto.append(k)

    def big(self, data: bytes) -> tuple:
        """A large payload part that cannot change (a function's pickle or template), kept out of it."""
        key = self.holder.identity_key(data, "bytes")
        self._add(key, data, auto=True)
        return ("dynexec.object", key, "part")  # kept by the server process, which unpickles it once

    def persistent_id(self, obj):
        t = type(obj)
        if t is Shared:
            if obj._holder is not self.holder:
                raise TypeError(f"{obj!r} belongs to another executor (or was released)")
            self._add(obj.key, obj._data, auto=False)
            return ("dynexec.object", obj.key, "shared")
        if t is bytes and len(obj) >= THRESHOLD:
            key = self.holder.identity_key(obj, "bytes")
            self._add(key, obj, auto=True)
            return ("dynexec.object", key, "bytes")
        if t is np.ndarray and obj.nbytes >= THRESHOLD and not obj.dtype.hasobject and obj.dtype.names is None:
            a = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
            how = ("ndarray", a.dtype.str, a.shape)
            if a is obj and not obj.flags.writeable:
                key, data = self.holder.identity_key(obj, how), obj
            else:  # it may change between jobs: hashed each time, and copied when first sent
                key = key_of(repr(how).encode(), a)
                data = self.holder.kept(key)
                if data is None:
                    data = a.copy() if a is obj else a
            self._add(key, data, auto=True)
            return ("dynexec.object", key, how)
        return None

    def _add(self, key, data, auto):
        if key not in self.objects:
            self.objects[key] = _buffer(data)  # borrowed by the core: no copy however often it is sent
            if auto:
                self.auto.append(key)


class _Collecting(pickle.Pickler):
    def __init__(self, file, collector):
        super().__init__(file, protocol=_PROTOCOL)
        self.persistent_id = collector.persistent_id


class _Outer(pickle.Pickler):
    def __init__(self, file, refs: dict):
        super().__init__(file, protocol=_PROTOCOL)
        self._refs = refs  # id of a large part -> its persistent id

    def persistent_id(self, obj):
        return self._refs.get(id(obj)) if type(obj) is bytes else None


class _CloudCollecting(cloudpickle.CloudPickler):
    def __init__(self, file, collector):
        super().__init__(file, protocol=_PROTOCOL)
        self._collector = collector

    def persistent_id(self, obj):
        return self._collector.persistent_id(obj)


def _big(x) -> bool:
    t = type(x)
    return (t is Shared or (t is bytes and len(x) >= THRESHOLD)
            or (t is np.ndarray and x.nbytes >= THRESHOLD and not x.dtype.hasobject))


def _big_item(obj) -> bool:
    """Whether obj (arguments, a function's captured values) holds a large object at its first level or
    second (args and kwargs): then it is pickled with the objects out at once, not twice."""
    if type(obj) in (tuple, list):
        for x in obj:
            if _big(x) or (type(x) in (tuple, list) and any(_big(y) for y in x)) or \
                    (type(x) is dict and any(_big(y) for y in x.values())):
                return True
    return _big(obj)


def needs_collecting(pickled: bytes) -> bool:
    """Whether a payload part pickled plainly holds a large object or a Shared handle (then it is pickled
    again with a Collector). Small payloads pay one length check and one search."""
    return len(pickled) >= THRESHOLD or _MARK in pickled


class Holder:
    """An executor's objects: which it holds at its engine (or head), and when it lets them go."""

    def __init__(self, engine):
        self._engine = engine
        self._lock = threading.Lock()
        self._auto: dict = {}  # key -> [jobs pending, when the last one ended, its data as first sent]
        self._identity: dict = {}  # id(obj) -> (obj, key, data): immutable objects are hashed once
        self._shared: set = set()

    def identity_key(self, obj, how) -> str:
        """The key of an object that cannot change (bytes, a read-only array, a function's template): hashed
        once while it stays the same object (the cache holds it, so its id stays its own)."""
        with self._lock:
            hit = self._identity.get(id(obj))
            if hit is not None and hit[0] is obj:
                return hit[1]
        key = key_of(repr(how).encode(), obj)
        with self._lock:
            if len(self._identity) >= 8:
                self._identity.clear()
            self._identity[id(obj)] = (obj, key)
        return key

    def hold_shared(self, handle: Shared) -> None:
        with self._lock:
            self._shared.add(handle.key)
        weakref.finalize(handle, _release_later, weakref.ref(self), handle.key)

    def release_shared(self, key: str) -> None:
        with self._lock:
            if key not in self._shared:
                return
            self._shared.discard(key)
            if key in self._auto:
                return  # still used as an automatic object
        self._release([key])

    def kept(self, key):
        """The data of an automatic object held now (what later jobs naming it send), or None."""
        entry = self._auto.get(key)
        return None if entry is None else entry[2]

    def started(self, collectors) -> None:
        """Jobs naming automatic objects were submitted."""
        with self._lock:
            for c in collectors:
                for k in c.auto:
                    entry = self._auto.setdefault(k, [0, 0.0, c.objects[k]])
                    entry[0] += 1

    def ended(self, keys) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                entry = self._auto.get(k)
                if entry is not None:
                    entry[0] -= 1
                    entry[1] = now
        self.sweep(now)

    def sweep(self, now=None) -> None:
        """Lets go of the automatic objects no job has used for GRACE seconds."""
        if not self._auto:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [k for k, (n, t, _) in self._auto.items() if n <= 0 and now - t >= GRACE]
            for k in idle:
                del self._auto[k]
            idle = [k for k in idle if k not in self._shared]
        if idle:
            self._release(idle)

    def _release(self, keys) -> None:
        try:
            self._engine.release(keys)
        except Exception:  # a closed engine or a lost head holds nothing any more
            pass


def _unresolved(key):
    raise RuntimeError(f"dynexec Shared object {key} was pickled outside a job of its executor: only jobs "
                       f"submitted to that executor (as an argument, or inside one) get the object")


def _release_later(holder_ref, key) -> None:
    # A finalizer runs wherever the handle's last reference went (maybe inside the engine's own calls):
    # the release waits for the next submit's sweep.
    holder = holder_ref()
    if holder is not None:
        with holder._lock:
            if key in holder._shared:
                holder._shared.discard(key)
                holder._auto.setdefault(key, [0, 0.0, None])
