"""How jobs and results are pickled on their way between processes.

Callables pickled by value (functions of __main__, lambdas, local functions) are cached too: see
function_part. The cache keeps a function's pickle only while everything that pickle captured is unchanged.
"""
import functools
import io
import os
import pickle
import site
import sys
import sysconfig
import types

import cloudpickle

try:  # how cloudpickle itself decides by reference or by value (also honours register_pickle_by_value)
    from cloudpickle.cloudpickle import _should_pickle_by_reference
except ImportError:  # pragma: no cover - a cloudpickle that moved it: treat every function as by value
    def _should_pickle_by_reference(obj, name=None):
        return False

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj) -> bytes:
    """pickle where it is enough (several times faster), cloudpickle where it is not: lambdas, local
    functions, and whatever refers to __main__ or to a module shipped by value (see ship_local_modules),
    which the other process cannot import."""
    try:
        out = pickle.dumps(obj, protocol=_PROTOCOL)
        if b"__main__" not in out and not (_shipped and any(name in out for name in _shipped)):
            return out
    except Exception:
        out = None
    try:
        return cloudpickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:
        if out is None or b"__main__" in out:
            raise
        return out  # by value it cannot be (a lock, say): by reference, for servers that import it


# -- the client's own modules, by value ----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _installed_dirs() -> tuple:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.update(p for p in sysconfig.get_paths().values())
    try:
        dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    except AttributeError:  # pragma: no cover - a site module without them (some virtualenvs)
        pass
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


_local: dict = {}  # module name -> whether it is one of the client's own (shipped by value)
_shipped: set = set()  # names (bytes) of the modules registered by value, for dumps
_plain: set = set()  # types of arguments that are no module, function nor class, from modules not local


def is_local_module(module) -> bool:
    """Whether `module` is one of the client's own: a .py file outside the standard library and the installed
    packages (under sys.prefix/base_prefix, site-packages, dist-packages), e.g. beside the script or in a
    directory the user put on sys.path. __main__ is not: cloudpickle ships it by value anyway."""
    name = getattr(module, "__name__", None)
    path = getattr(module, "__file__", None)
    if not isinstance(name, str) or name == "__main__" or name.partition(".")[0] == "dynexec":
        return False
    if not isinstance(path, str) or not path.endswith(".py"):  # built in, frozen, compiled, namespace package
        return False
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_installed_dirs())


caches: list = []  # pickles cached by callable, made stale by a module newly shipped by value


def ship_local_modules(objs) -> None:
    """Registers with cloudpickle, by value, the client's own modules (is_local_module) that `objs` come from:
    a function or class from its module, another object from its class's. A cluster's compute servers import
    only installed packages (their PYTHONPATH is not the client's), so a job's callable or argument from a
    module beside the script would fail there with ModuleNotFoundError. Each module is looked at once (_local).
    Executors connected to a cluster call it; local servers get the client's sys.path and import them."""
    for obj in objs:
        t = type(obj)
        if t in _plain:
            continue
        if isinstance(obj, functools.partial):
            ship_local_modules((obj.func, *obj.args, *obj.keywords.values()))
            continue
        plain = False
        if t is types.ModuleType:
            name = obj.__name__
        elif t is types.FunctionType or isinstance(obj, type):
            name = obj.__module__
        elif t is types.MethodType:
            ship_local_modules((obj.__func__, obj.__self__))
            continue
        else:
            name, plain = t.__module__, True
        local = _local.get(name)
        if local is None:
            if len(_local) >= 4096:
                _local.clear()
            local = _local[name] = is_local_module(sys.modules.get(name)) if isinstance(name, str) else False
            if local:
                cloudpickle.register_pickle_by_value(sys.modules[name])
                _shipped.add(name.encode())
                for cache in caches:
                    cache.clear()
        if plain and not local and len(_plain) < 4096:
            _plain.add(t)


# -- by-value functions -----------------------------------------------------------------------------------
#
# A function pickled by value carries its code and what the code captured: the globals it names (co_names of
# its code and nested code, through the other by-value functions it refers to), closure cells, defaults. The
# pickle of such a "graph" of functions is cached in two parts:
#   template: the graph, cloudpickled once, with every *mutable* captured value (list, dict, array, instance,
#             a class of __main__ ...) replaced by a persistent id; servers unpickle it once (dynexec._runner);
#   state:    those mutable values, pickled afresh at every submit, so a job sees them as they are then.
# A cached template is reused only while every captured value of an unchanging kind (int, str, modules,
# importable functions ...) is the very object it was (`is`: the cache holds it, so its id is not reused).

MAX_CACHED = 1024  # functions whose template is kept; the cache is emptied when it is full

_MISSING = object()  # a name not (yet) bound in the globals, or an empty closure cell


class Uncachable(Exception):
    """The function cannot be split into template and state (it is pickled whole at every submit)."""


_ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis), type(NotImplemented),
                    range})


def _unchanging(v) -> bool:
    """True for values whose pickle cannot change while they stay the same object."""
    t = type(v)
    if t in _ATOMS:
        return True
    if t is tuple or t is frozenset:
        return all(_unchanging(x) for x in v)
    if t is types.ModuleType:
        return _should_pickle_by_reference(v)
    if t is types.FunctionType or isinstance(v, type):
        return _should_pickle_by_reference(v)
    if t is types.BuiltinFunctionType:  # len, math.sqrt; not a bound method like some_list.append
        return v.__self__ is None or isinstance(v.__self__, types.ModuleType)
    return False


def _code_names(code, out=None) -> dict:
    """co_names of `code` and of the code objects nested in it (cloudpickle captures a subset of these)."""
    out = {} if out is None else out
    for name in code.co_names:
        out[name] = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, out)
    return out


def _by_value(v) -> bool:
    return type(v) is types.FunctionType and not _should_pickle_by_reference(v)


class _Captured:
    """What one by-value function captured, and how to tell whether it still holds."""
    __slots__ = ("template", "nodes", "same", "cells", "slots", "shared", "modules", "shipped")

    def fresh(self):
        """The values of the mutable slots as they are now, or None if the template no longer holds."""
        for fn, code, defaults, kwdefaults, kwlen, ann, annlen, name, qualname, module, doc in self.nodes:
            if (fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults
                    or fn.__annotations__ is not ann or fn.__name__ is not name or fn.__qualname__ is not qualname
                    or fn.__module__ is not module or fn.__doc__ is not doc or fn.__dict__
                    or (kwlen >= 0 and len(kwdefaults) != kwlen) or len(ann) != annlen):
                return None
        for d, key, v in self.same:
            if d.get(key, _MISSING) is not v:
                return None
        for cell, v in self.cells:
            if _cell(cell) is not v:
                return None
        if self.modules >= 0 and len(sys.modules) != self.modules:
            return None  # a submodule imported since may now be needed by the code (cloudpickle ships those)
        if not self.slots:
            return ()
        state = [read() for read in self.slots]
        for k, read in self.shared:  # one object in several places: it must still be one object
            if read() is not state[k]:
                return None
        if any(v is _MISSING for v in state):  # `in` would compare with ==
            return None
        return state


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def _reader(kind, where, key):
    if kind == "dict":
        return lambda: where.get(key, _MISSING)
    if kind == "cell":
        return lambda: _cell(where)
    return lambda: where.__defaults__[key]  # "default": where is the function


class _TemplatePickler(cloudpickle.CloudPickler):
    """cloudpickle, but the mutable values it meets go out as persistent ids (slots), numbered as met."""

    def __init__(self, file, slot_objects: dict):
        super().__init__(file, protocol=_PROTOCOL)
        self._slot_objects = slot_objects  # id -> the object (held, so the id stays its own)
        self.used: dict[int, int] = {}  # id -> slot number

    def persistent_id(self, obj):
        if id(obj) in self._slot_objects:
            return self.used.setdefault(id(obj), len(self.used))
        return None


def capture(fn, ship=False) -> _Captured:
    """Splits a by-value function into its template and how to read its state; Uncachable if it cannot be."""
    nodes, seen = [], set()
    same, cells, places = [], [], []  # places: (id of the mutable object, kind, where, key)
    slot_objects = {}
    modules = False
    todo = [fn]

    def classify(v, kind, where, key):
        nonlocal modules
        if ship and (type(v) is types.ModuleType or type(v) is types.FunctionType or isinstance(v, type)):
            ship_local_modules((v,))  # before _by_value: a function of such a module goes by value
        if _by_value(v):
            todo.append(v)
        elif not (v is _MISSING or _unchanging(v)):
            slot_objects[id(v)] = v
            places.append((id(v), kind, where, key))
            return
        modules = modules or type(v) is types.ModuleType
        if kind == "cell":
            cells.append((where, v))
        elif kind == "dict":
            same.append((where, key, v))
        # a default of an unchanging kind is covered by the identity of the defaults tuple

    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        if f.__dict__:
            raise Uncachable("the function has attributes of its own")
        ann = f.__annotations__
        if not all(_unchanging(v) for v in ann.values()):
            raise Uncachable("an annotation is not a plain importable value")
        kw = f.__kwdefaults__
        nodes.append((f, f.__code__, f.__defaults__, kw, -1 if kw is None else len(kw), ann, len(ann),
                      f.__name__, f.__qualname__, f.__module__, f.__doc__))
        g = f.__globals__
        for name in _code_names(f.__code__):
            classify(g.get(name, _MISSING), "dict", g, name)
        for cell in f.__closure__ or ():
            classify(_cell(cell), "cell", cell, None)
        for i, v in enumerate(f.__defaults__ or ()):
            classify(v, "default", f, i)
        for name, v in (kw or {}).items():
            classify(v, "dict", kw, name)

    buf = io.BytesIO()
    pickler = _TemplatePickler(buf, slot_objects)
    pickler.dump((fn, [n[0] for n in nodes]))
    c = _Captured()
    c.template, c.shipped = buf.getvalue(), ship
    c.nodes, c.same, c.cells = nodes, same, cells
    c.modules = len(sys.modules) if modules else -1
    # State: one reader per slot number (the first place it was found); other places of the same object are
    # checked to hold it still. Places cloudpickle did not pickle (co_names is a superset) are ignored.
    first, c.slots, c.shared = {}, [None] * len(pickler.used), []
    for oid, kind, where, key in places:
        k = pickler.used.get(oid)
        if k is None:
            continue
        if k in first:
            c.shared.append((k, _reader(kind, where, key)))
        else:
            first[k] = True
            c.slots[k] = _reader(kind, where, key)
    return c


_captured: dict = {}  # function -> _Captured (holds the function and every unchanging value it captured)
caches.append(_captured)


def function_part(fn, ship=False, dump=dumps):
    """What a job's payload carries for a by-value function: (template, pickled state), or None if `fn` is not
    a by-value function or cannot be split (pickle it whole then). ship: see ship_local_modules. dump: how the
    state is pickled (dynexec.objects.Collector.dump leaves large objects out)."""
    c = _captured.get(fn)
    state = None if c is None or (ship and not c.shipped) else c.fresh()
    if state is None:
        if not _by_value(fn):
            return None
        try:
            c = capture(fn, ship)
        except Uncachable:
            return None
        state = c.fresh()
        if state is None:  # it changed while we looked (another thread): no cache this time
            return None
        if len(_captured) >= MAX_CACHED:
            _captured.clear()
        _captured[fn] = c
    return (c.template, dump(state) if state else b"")


# -- the compute server's side ------------------------------------------------------------------------------
class _Slot:
    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return _Slot(pid)


class Instance:
    """One unpickled copy of a template; bind(state) puts a job's mutable values where the pickle had them.
    A copy serves one job at a time (dynexec._runner keeps a pool of them per template)."""

    def __init__(self, template: bytes):
        self.fn, nodes = _Unpickler(io.BytesIO(template)).load()
        self._dicts, self._cells, self._defaults = [], [], []
        found, dicts = set(), set()
        for f in nodes:
            for d in (f.__globals__, f.__kwdefaults__ or {}):
                if id(d) in dicts:  # functions of one module share one globals dict
                    continue
                dicts.add(id(d))
                for key, v in d.items():
                    if type(v) is _Slot:
                        self._dicts.append((d, key, v))
                        found.add(v.k)
            for cell in f.__closure__ or ():
                v = _cell(cell)
                if type(v) is _Slot:
                    self._cells.append((cell, v))
                    found.add(v.k)
            if any(type(v) is _Slot for v in f.__defaults__ or ()):
                self._defaults.append((f, f.__defaults__))
                found.update(v.k for v in f.__defaults__ if type(v) is _Slot)
        self.slots = len(found)
        if found != set(range(self.slots)):
            raise RuntimeError(f"the pickled function {getattr(self.fn, '__qualname__', '?')} refers to mutable "
                               f"values at places this server cannot fill in (slots {sorted(found)})")

    def bind(self, state: list):
        if len(state) != self.slots:
            raise RuntimeError(f"a job brought {len(state)} captured values for a function that has {self.slots}")
        for d, key, slot in self._dicts:
            d[key] = state[slot.k]
        for cell, slot in self._cells:
            cell.cell_contents = state[slot.k]
        for f, defaults in self._defaults:
            f.__defaults__ = tuple(state[v.k] if type(v) is _Slot else v for v in defaults)
        return self.fn

    def unbind(self):
        """Lets go of the job's values (they may be large), back to the placeholders."""
        for d, key, slot in self._dicts:
            d[key] = slot
        for cell, slot in self._cells:
            cell.cell_contents = slot
        for f, defaults in self._defaults:
            f.__defaults__ = defaults
