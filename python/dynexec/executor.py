"""dynexec.Executor: a concurrent.futures.Executor over the dynexec engine."""
from __future__ import annotations

import functools
import getpass
import itertools
import os
import pickle
import socket
import sys
import types
import threading
import time
import weakref
from concurrent.futures import Executor as _Executor
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from pathlib import Path

from . import _core, connection
from . import _pickling, display
from . import progress as _progress
from ._pickling import _by_value, dumps, function_part, ship_local_modules
from .objects import Collector, Holder, Shared
from .errors import BrokenExecutorError, InvalidJobError, _decode_error
from .local import LocalServers
from . import _jobinfo
from .notify import Notifier, NotifyConfig, parse_targets
from .results import Result, default_archive

POLICIES = tuple(_core.POLICIES)
_live_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_plugins: dict[str, list[str]] = {}  # every plugin this process loaded: path -> service names
_collectors: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # joined at exit, also those of dropped executors


def _default_owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


_function_blobs: dict = {}  # callable -> its pickle, for those pickled by reference only
_pickling.caches.append(_function_blobs)  # stale once the callable's module is shipped by value


def _function_blob(fn, ship=False, dump=dumps):
    """The callable's part of a job payload: its pickle (bytes), or for a function pickled by value (of
    __main__, a lambda, a local function) (template, state) from _pickling.function_part: the template is
    cached while what it captured is unchanged, the mutable values it captured are pickled afresh.
    ship: for a cluster's servers, which cannot import the client's own modules (_pickling.ship_local_modules).
    dump: how what is not cached is pickled (dynexec.objects.Collector.dump leaves large objects out)."""
    if ship:
        ship_local_modules((fn,))  # first: a function of the client's own modules goes by value
    try:
        blob = _function_blobs.get(fn)
    except TypeError:  # unhashable callable
        return dump(fn)
    if blob is not None:
        return blob
    part = function_part(fn, ship, dump)
    if part is not None:
        return part
    # A function that pickle alone sends by reference (module and name, nothing else) is safe to reuse.
    if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)) and not _by_value(fn):
        try:
            blob = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            blob = None
        if blob is not None and b"__main__" not in blob:
            if len(_function_blobs) >= 1024:
                _function_blobs.clear()
            _function_blobs[fn] = blob
            return blob
    return dump(fn)


def _unpicklable(fn, what: str, exc: Exception) -> InvalidJobError:
    return InvalidJobError(f"cannot send {getattr(fn, '__qualname__', fn)!s} to a compute server: {what} cannot "
                           f"be pickled ({type(exc).__name__}: {exc})")


def job_payload(fn, args, kwargs, ship=False, collector: Collector | None = None) -> bytes:
    """What a compute server runs (dynexec._runner.run): the callable pickled on its own, so that a server
    unpickles each callable once, and the arguments. ship: see _function_blob. collector: takes the payload's
    large objects, which travel apart (dynexec.objects)."""
    c = collector or Collector(None)
    return _payload(_function_blob(fn, ship, c.dump), args, kwargs, ship, c)


def _payload(blob, args, kwargs, ship=False, collector: Collector | None = None) -> bytes:
    # The arguments are pickled apart from the callable's blob: a by-value blob holds the text "__main__",
    # which would send every payload through cloudpickle (dumps looks for it).
    if ship:
        ship_local_modules(args)
        if kwargs:
            ship_local_modules(kwargs.values())
    c = collector or Collector(None)
    return c.payload(blob, c.dump((args, kwargs)))


_condition_lock = threading.Lock()  # makes each future's Condition exactly once


_TAKE_SLICE = 0.05  # seconds


class _Home:
    """What an executor's futures reach: its engine, and its table of futures, so that a future whose result()
    is waited on can settle itself; the archive and a tally of outcomes other than success, for display."""
    __slots__ = ("engine", "futures", "lock", "archive", "tally")

    def __init__(self, engine, futures: dict, lock: threading.Lock, archive=None):
        self.engine, self.futures, self.lock, self.archive = engine, futures, lock, archive
        self.tally: dict[str, int] = {}  # status -> jobs settled with it, under lock


class JobFuture(Future):
    """A Future for one job; `job_id` finds its result in the archive later.

    `stdout` and `stderr`: what the job printed (as Result.stdout/.stderr), set when its result arrives,
    before the future is done; "" until then, and for jobs run in this process (processes=False)."""

    stdout = ""
    stderr = ""

    def __init__(self, executor: Executor, job_id: str = ""):
        # Future.__init__ but for its Condition, made on first use: a queued job's future is half the size.
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []
        self.job_id = job_id
        self._home = executor._home

    @property
    def _condition(self) -> threading.Condition:
        try:
            return self.__dict__["_lazy_condition"]
        except KeyError:
            with _condition_lock:
                return self.__dict__.setdefault("_lazy_condition", threading.Condition())

    def cancel(self) -> bool:
        with self._condition:
            if self._state != PENDING:
                return super().cancel()
        return self._cancelled(self._home.engine.cancel(self.job_id))

    def _cancelled(self, ok: bool) -> bool:
        """The engine's answer to cancelling this job: True = it never starts."""
        if ok:
            return super().cancel()
        with self._condition:  # it has started: say so
            if self._state == PENDING:
                self._state = RUNNING
        return False

    def running(self) -> bool:
        """True while the job runs on a compute server (it has started and not finished)."""
        with self._condition:
            state = self._state
        if state != PENDING:
            return state == RUNNING
        return self._home.engine.state(self.job_id) == "running"

    def kill(self) -> bool:
        """Stops the job: one that has not started never will (the future is cancelled); a running one is
        stopped and fails with JobKilledError (a Python job's server process is ended and replaced; a native
        service is asked to stop, see Params::stop_requested). False if the job has already finished."""
        if self.done():
            return False
        return self._home.engine.kill(self.job_id)

    def result(self, timeout=None):
        if self._state in (PENDING, RUNNING):
            self._take_own(timeout)
        return super().result(timeout)

    def _take_own(self, timeout: float | None) -> None:
        """Waits in the engine for this job's result and settles the future itself: one hand-off less than
        through the collector thread (see cpp/common/result_queue.hpp). When the collector has it already,
        result() waits for the collector to settle it, as other waits (wait(), as_completed()) do."""
        home = self._home
        if not home.engine.expect(self.job_id):
            return
        item = None
        try:
            if self.done():  # settled before it was expected
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            while item is None:
                # In slices: Ctrl-C is seen between them, and a future settled otherwise (a broken executor).
                wait = _TAKE_SLICE if deadline is None else min(_TAKE_SLICE, deadline - time.monotonic())
                if wait <= 0:
                    return
                item = home.engine.await_result(self.job_id, wait)
                if item is None and self.done():
                    return
        finally:
            if item is None:
                home.engine.forget(self.job_id)  # a result still to come goes to the collector
            else:
                with home.lock:
                    home.futures.pop(self.job_id, None)
                _settle_all([(self, item[1], item[2])])

    def __repr__(self):
        return super().__repr__()[:-1] + f" job_id={self.job_id}>"

    def _repr_html_(self):
        return display.future_html(self)


class Executor(_Executor):
    """Runs jobs on compute servers chosen by a load balancer, archiving every result in HDF5.

    max_workers: compute servers to start (default: os.cpu_count()).
    policy: how the load balancer picks a server, one of POLICIES (default "power_of_two").
    archive: directory of the HDF5 results archive; None means default_archive()
        ($DYNEXEC_ARCHIVE or ~/.local/share/dynexec/archive); False turns archiving off.
    owner: recorded with every result (default "user@host").
    slots_per_server: jobs each server runs at once (default 1).
    threads_per_server: oneTBB threads each server's native services may use (default: every core).
    lease_seconds, renew_seconds: registration lease and renewal interval (defaults 2.0 and lease/4).
    max_attempts: how many vanished servers a job may outlive before it fails with ServerLostError.
    processes: True (default) runs each compute server in its own process, so pure-Python jobs use every
        core; False runs them as threads of this process (Python jobs then share the GIL).
    connect: a cluster's connection file (see `python -m dynexec.cluster`): submit to that cluster instead
        of starting servers here; max_workers, policy, archive and the server settings belong to the cluster.
        A file whose cluster is gone (its head's pid is dead on this host, or on another host its endpoint does
        not answer a TCP connect within 2 s) fails at once with connection.StaleConnectionFileError (a ValueError)
        naming its host and pid.
    wait: with connect=, seconds to wait for the connection file to appear and its head to be alive (a
        cluster started after this client); default 0: fail at once when it is missing or stale.
    time_limit, retries: defaults for every job's options (see options()): seconds a job may run (None: no
        limit) and how often a job that raises is run again (0).
    echo_output: write what each job prints, while it runs, to this process's stdout/stderr, each line
        labelled "[<job_id>] " (in Jupyter: into the cell that submitted the job), also with connect=; with
        processes=False, jobs print here directly anyway.
    notify: "mailto:ADDRESS", an http(s):// webhook URL, or a list of them, told when each job's result is
        ready (see dynexec.notify; per job: options(notify=)). Invalid ones raise InvalidJobError here.
    notify_config: a dynexec.NotifyConfig (SMTP server, gateway URL, retries); default NotifyConfig.from_env().
    label: a label for this session, kept in its archive file (see dynexec.sessions()); with connect=, the
        session is the cluster's, started without it (label jobs with options(label=...) instead).
    archive_mode: who may read the archive files this executor creates: "owner" (default: files 0600,
        directories 0700) or "group" (0640 and 0750: the owner's group reads them too).
    """

    def __init__(self, max_workers: int | None = None, policy: str = "power_of_two", archive=None, *,
                 owner: str | None = None, slots_per_server: int = 1, threads_per_server: int | None = None,
                 lease_seconds: float = 2.0, renew_seconds: float | None = None, max_attempts: int = 3,
                 seed: int = 0, processes: bool = True, connect=None, wait: float = 0.0, start_timeout: float = 60.0,
                 time_limit: float | None = None, retries: int = 0, echo_output: bool = False, notify=None,
                 notify_config: NotifyConfig | None = None, label: str | None = None, archive_mode: str = "owner"):
        self._notify = parse_targets(notify)  # checked before anything starts, as is the environment's config
        self._notify_config = notify_config or (NotifyConfig.from_env() if self._notify else None)
        self._notifier = None
        self._local = None
        self._echo = None
        self._session = None
        self._broken = None  # why no compute server can be had, once that is so
        self._defaults = _job_options(time_limit, retries)
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, got {type(label).__name__}")
        if archive_mode not in ("owner", "group"):
            raise ValueError(f'archive_mode must be "owner" or "group", got {archive_mode!r}')
        self._ship = connect is not None  # the client's own modules, by value: its servers cannot import them
        if connect is not None:
            if max_workers is not None or archive is not None:
                raise ValueError("with connect=, the cluster decides max_workers and archive; do not pass them")
            info = connection.read_live(connect, "client", wait)  # checked here: no secret reaches an error
            self._archive = Path(info["archive"]) if info.get("archive") else None
            self._session = info.get("session", "")
            self._owner = owner or _default_owner()
            endpoint = connection.pick_endpoint(connection.endpoints(info), source=connect)
            self._engine = _core.Client(endpoint, info["server_public_key"], info["client_public_key"],
                                        info["client_secret_key"], float(start_timeout))
            self._start_echo(echo_output)
            self._start_collector()
            return
        if wait:
            raise ValueError("wait= is how long connect= waits for a cluster's connection file; pass connect= too")
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if policy not in POLICIES:
            raise ValueError(f"unknown balancing policy {policy!r} (choose one of: {', '.join(POLICIES)})")
        if slots_per_server < 1:
            raise ValueError("slots_per_server must be at least 1")
        if archive is None:
            archive = default_archive()
        self._archive = Path(archive).absolute() if archive is not False else None
        self._owner = owner or _default_owner()
        engine_args = (policy, self._archive, float(lease_seconds), float(renew_seconds or 0), max_attempts, seed)
        engine_kw = {"archive_mode": archive_mode}
        if processes:
            keys = connection.new_keys()
            # Separate processes share the cores: by default each gets its share for native parallelism.
            threads = threads_per_server or max(1, (os.cpu_count() or 1) // max_workers)
            self._local = LocalServers(slots_per_server, threads)
            try:
                self._engine = _core.Engine(0, slots_per_server, 0, *engine_args, **engine_kw,
                                            listen={"bind": self._local.bind, **connection.listen_keys(keys)})
            except BaseException:
                self._local.stop()
                raise
            self._local.joined(self._engine.endpoint, keys)
            self._local.start(max_workers)
            try:
                self._local.wait_registered(self._engine, max_workers, start_timeout)
                for path, names in _plugins.items():  # loaded before this executor started
                    self._engine.load_plugin(path, names, start_timeout)
            except BaseException:
                self._engine.shutdown(False, True)
                raise
        else:
            self._engine = _core.Engine(max_workers, slots_per_server, threads_per_server or 0, *engine_args, **engine_kw)
        if self._archive is not None:
            try:
                self._engine.set_session_info(_jobinfo.session_info(label))
            except BaseException:
                self._engine.shutdown(False, True)
                if self._local is not None:
                    self._local.stop()
                raise
        self._start_echo(echo_output and processes)
        self._start_collector()
        if self._local is not None:
            self._local.supervise(self._engine, _on_broken(weakref.ref(self)), self._closing)

    def _start_echo(self, on: bool) -> None:
        if on:
            from .output import Echo
            self._echo = Echo(self._engine)
            weakref.finalize(self, self._echo.stop, 0)  # dropped without shutdown(): its thread ends too

    def _start_collector(self):
        self._futures: dict[str, JobFuture] = {}
        self._early: dict[str, tuple] = {}  # results that came before their future was registered
        self._lock = threading.Lock()  # guards _futures, _early and _shutdown (never held across a call into the engine)
        self._shutdown = False
        self._closing = threading.Event()  # set once someone shuts the engine down
        self._engine_done = threading.Event()
        # The collector holds the executor only weakly, so one dropped without shutdown() is collected and its
        # engine closed (like ThreadPoolExecutor's workers), instead of its servers living on until exit.
        self._home = _Home(self._engine, self._futures, self._lock, self._archive)
        self._objects = Holder(self._engine)
        self._collector = threading.Thread(target=_collect, name="dynexec-results", daemon=True,
                                           args=(weakref.ref(self), self._engine, self._futures, self._early, self._lock,
                                                 self._closing, self._engine_done))
        self._collector.start()
        _collectors.add(self._collector)
        _live_executors.add(self)
        if self._notify_config is not None:
            self._notifier = Notifier(self._notify_config, self._archive)

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs) -> JobFuture:
        """Runs fn(*args, **kwargs) on a compute server; the future carries the job ID."""
        return self._submit_fn(self._defaults, fn, args, kwargs, self._notify)

    def submit_service(self, service: str, /, **params) -> JobFuture:
        """Runs the native service `service` (e.g. "pi.monte_carlo") with keyword parameters."""
        return self._submit_service(self._defaults, service, params, self._notify)

    def submit_command(self, argv, /, *, env=None, cwd=None) -> JobFuture:
        """Runs a program on a compute server (the built-in service "command"): `argv` its arguments (str or
        path; the first is looked up on the server's PATH), `env` a dict set over the server's environment
        (merged, not replacing it), `cwd` its working directory (None: the server's). What it prints is the
        job's output. Exit 0: the result is 0; another exit code or a signal: CommandError (its `returncode`,
        -N for signal N). kill() and time limits end its whole process group (SIGTERM, then SIGKILL)."""
        return self._submit_service(self._defaults, "command", command_params(argv, env, cwd), self._notify)

    def map(self, fn, *iterables, timeout=None, chunksize=1, progress=False, futures=False):
        """Like ProcessPoolExecutor.map: chunksize > 1 sends items in batches, one job per batch.

        Jobs go to the engine many at a time (one call per _MAP_BATCH), far cheaper than one submit() each.
        progress: True (or a description, a str) shows a bar of the jobs completed while the results are
        iterated (dynexec.progress: tqdm when there, else plain text).
        futures=True returns the list of JobFutures instead (one per job, in order; each has its job_id), so
        that every job of a map can be found in the archive later."""
        return self._map(self._defaults, fn, iterables, timeout, chunksize, progress, self._notify, futures)

    def options(self, *, time_limit: float | None = None, retries: int | None = None, notify=None,
                label: str | None = None, tags=None) -> JobOptions:
        """The same executor, with options for the jobs submitted through it (they do not collide with the
        callable's own keyword arguments):

            ex.options(time_limit=60, retries=2).submit(fn, x)

        time_limit: seconds a job may run (each time it starts); past it, it is stopped and fails with
            JobTimeoutError (archive status "timeout"). Default: the executor's `time_limit` (None: none).
        retries: how many times a job that raises is run again before its error is reported (default: the
            executor's `retries`, 0). A job whose server dies is run again anyway (see max_attempts).
        notify: targets told when the job's result is ready, instead of the executor's `notify` ([] for none).
        label, tags: a str and a list of str, recorded with each job in the archive (columns `label` and
            `tags`, the latter a JSON array), e.g. ex.options(label="sweep-3", tags=["calib"]).map(f, xs);
            dynexec.read_archive(path, label="sweep-3") finds them."""
        return JobOptions(self, self._defaults, self._notify).options(time_limit=time_limit, retries=retries,
                                                                      notify=notify, label=label, tags=tags)

    def scatter(self, obj) -> Shared:
        """Sends `obj` to the compute servers once: jobs given the handle (as an argument, or inside one) get
        `obj` itself, unpickled once per server process and shared by the jobs there (treat it as read-only).
        Servers drop it once `handle.release()` was called (or the handle is garbage) and no job needs it."""
        return Shared(obj, self._objects)

    def _submit_fn(self, opts, fn, args, kwargs, notify=()) -> JobFuture:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        c = Collector(self._objects)
        try:
            payload = job_payload(fn, args, kwargs, self._ship, c)
        except Exception as exc:
            raise _unpicklable(fn, "the callable or its arguments", exc) from exc
        info = _jobinfo.describe(_jobinfo.function_name(fn), args, kwargs, opts[2], opts[3])
        if not c.objects:
            return self._submit(lambda: self._engine.submit_python(payload, self._owner, *opts[:2], None, info),
                                notify)
        return self._with_objects([c], lambda: [self._engine.submit_python(payload, self._owner, *opts[:2],
                                                                            c.objects, info)], notify)[0]

    def _with_objects(self, collectors, send, notify=()) -> list[JobFuture]:
        """Submits jobs that name objects (dynexec.objects): automatic ones are held while a job needs them."""
        held = self._objects
        held.sweep()
        auto = [c.auto for c in collectors]
        held.started(collectors)
        try:
            futures = self._submit_many(send, notify)
        except BaseException:
            held.ended([k for keys in auto for k in keys])
            raise
        for f, keys in zip(futures, auto):
            if keys:
                f.add_done_callback(lambda _, keys=keys: held.ended(keys))
        return futures

    def _submit_service(self, opts, service, params, notify=()) -> JobFuture:
        info = _jobinfo.describe("", (), params, opts[2], opts[3])
        info = ("", info[1], service + info[2][1:], info[3], info[4])  # "demo.square(x=3.0)"
        return self._submit(lambda: self._engine.submit(service, params, self._owner, *opts[:2], info), notify)

    def _submit(self, send, notify=()) -> JobFuture:
        return self._submit_many(lambda: [send()], notify)[0]

    def _submit_many(self, send, notify=()) -> list[JobFuture]:
        """`send()` submits and returns the job IDs. It runs without the lock: a client may wait for the head
        (job IDs, service signatures). A result that comes before its future is registered waits in _early."""
        where = self._echo.where() if self._echo is not None else None
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._broken:
                raise BrokenExecutorError(self._broken)
        notifier = self._notifier_for() if notify else None  # before send(): its configuration may be wrong
        futures = [JobFuture(self, job_id) for job_id in send()]
        if self._echo is not None:
            self._echo.track(futures, where)
        if notifier is not None:  # before they can settle: a done-callback queues each notification
            notifier.watch(futures, notify)
        with self._lock:
            self._futures.update((f.job_id, f) for f in futures)
            early = [(self._futures.pop(f.job_id), *self._early.pop(f.job_id)) for f in futures
                     if f.job_id in self._early] if self._early else []
        _settle_all(early)
        return futures

    def _map(self, opts, fn, iterables, timeout, chunksize, progress=False, notify=(), as_futures=False):
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        name = _jobinfo.function_name(fn)
        if chunksize > 1:
            fn, items = functools.partial(_run_chunk, fn), ((c,) for c in _chunks(zip(*iterables), chunksize))
        else:
            items = zip(*iterables)
        shared = Collector(self._objects)  # what the callable part holds, for every job of the map
        try:
            blob = _function_blob(fn, self._ship, shared.dump)
        except Exception as exc:
            raise _unpicklable(fn, "the callable", exc) from exc
        futures, sizes = [], []
        for batch in iter(lambda: list(itertools.islice(items, _MAP_BATCH)), []):
            collectors = [Collector(self._objects) for _ in batch]
            try:
                payloads = [_payload(blob, args, {}, self._ship, c) for args, c in zip(batch, collectors)]
            except Exception as exc:
                for f in futures:
                    f.cancel()
                raise _unpicklable(fn, "its arguments", exc) from exc
            if shared.objects:
                for c in collectors:
                    c.merge(shared)
            infos = [_jobinfo.describe(name, args, {}, opts[2], opts[3]) for args in batch]
            if any(c.objects for c in collectors):
                objects = [c.objects for c in collectors]
                futures += self._with_objects(collectors, lambda: self._engine.submit_python_many(
                    payloads, self._owner, *opts[:2], objects, infos), notify)
            else:
                futures += self._submit_many(lambda: self._engine.submit_python_many(
                    payloads, self._owner, *opts[:2], None, infos), notify)
            if progress and chunksize > 1:
                sizes += [len(args[0]) for args in batch]
        if as_futures:
            return futures
        results = (_progress.in_order(futures, end_time, progress, sizes if chunksize > 1 else None) if progress
                   else _in_order(futures, end_time))
        return itertools.chain.from_iterable(results) if chunksize > 1 else results

    def _notifier_for(self) -> Notifier:
        with self._lock:  # the first per-job notify of an executor without notify=
            if self._notifier is None:
                self._notifier = Notifier(NotifyConfig.from_env(), self._archive)
            return self._notifier

    # -- the cluster ------------------------------------------------------------------------------
    def servers(self) -> list[dict]:
        """Each registered compute server: id, host, pid, lease_expiry, services, statistics."""
        return self._engine.servers()

    def status(self) -> dict:
        """What the executor is doing, and why jobs wait: {"servers": servers(), "running": jobs started,
        "queued": jobs on servers not started yet, "waiting": {service: jobs waiting in the load balancer},
        "why": sentences, e.g. "3 job(s) of 'python' wait: no compute server offers it"}."""
        servers, backlog = self.servers(), self._engine.backlog()
        why = [self._broken] if self._broken else []
        for service, n in sorted(backlog["waiting"].items()):
            offering = sum(service in s["services"] for s in servers)
            why.append(f"{n} job(s) of {service!r} wait: " + (
                "no compute server offers it" if not offering else
                f"the {offering} compute server(s) that offer it have no room"))
        return {"servers": servers, **backlog, "why": why}

    def add_server(self, slots: int = 1, threads: int = 0, timeout: float = 60.0) -> str:
        """Starts and registers one more compute server; it gets work at once. Returns its ID."""
        if self._local is None:
            return self._engine.add_server(slots, threads)
        if self._broken:
            raise BrokenExecutorError(self._broken)
        return self._local.add(self._engine, timeout)

    def remove_server(self, server_id: str) -> None:
        """Takes a server out of the registry now; jobs it held that had not started run elsewhere. A server
        process of this executor is ended (and not replaced)."""
        if self._local is not None:
            self._local.retire(next((s["pid"] for s in self.servers() if s["id"] == server_id), None))
        self._engine.remove_server(server_id)

    @property
    def connection_file(self) -> Path | None:
        """The server join file of this executor's own head (local processes), if it has one: more compute
        servers on this machine join with `python -m dynexec.server --join FILE`. It is no client connection
        file (Executor(connect=) refuses it): a local head takes clients in this process only."""
        return self._local.connection_file if self._local else None

    def shutdown_cluster(self) -> None:
        """With connect=: stops the whole cluster (every process it started), after this executor's jobs."""
        self.shutdown(wait=True)
        self._engine.shutdown_cluster()

    def stats(self) -> dict:
        return self._engine.stats()

    @property
    def archive(self) -> Path | None:
        return self._archive

    @property
    def session(self) -> str:
        return self._session if self._session is not None else self._engine.session

    def find(self, job_id: str) -> Result:
        from .results import find
        if self._archive is None:
            raise ValueError("this executor does not archive results (archive=False)")
        return find(job_id, self._archive)

    def __repr__(self):
        return display.executor_text(self)

    def _repr_html_(self):
        return display.executor_html(self)

    # -- shutting down ----------------------------------------------------------------------------
    _closer: threading.Thread | None = None  # runs the engine's shutdown, which cannot be interrupted
    _close_error: BaseException | None = None
    _interrupted = False  # a wait in shutdown() was cut short by Ctrl-C: the exit hook waits only briefly

    def __exit__(self, exc_type, exc_val, exc_tb):
        # Ctrl-C leaving the block cancels what has not started, instead of running the whole backlog first.
        self.shutdown(wait=True, cancel_futures=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        return False

    def shutdown(self, wait=True, *, cancel_futures=False):
        try:
            with self._lock:
                self._shutdown = True
                queued = list(self._futures.values()) if cancel_futures else []
            # Cancel queued jobs before returning, as concurrent.futures does, also with wait=False or on a second
            # call (the engine's own cancel_pending happens later, in the closing thread, and its
            # shutdown(False, True) would block until running jobs end). Those already started just say so.
            _cancel_many(self._engine, queued)
            with self._lock:
                closer = None
                if self._closer is None:
                    self._closing.set()
                    closer = self._closer = threading.Thread(target=self._close, args=(cancel_futures,),
                                                             name="dynexec-shutdown", daemon=True)
            if closer is not None:
                closer.start()
            if wait:
                # The engine's shutdown runs on the closer thread, so that Ctrl-C reaches this one at once.
                _wait_for(self._engine_done)
                _join(self._collector)
                if self._notifier is not None:  # every future is settled: what they queued gets a bounded time
                    self._notifier.close()
                if self._close_error is not None:
                    raise self._close_error
        except KeyboardInterrupt:
            self._interrupted = True
            raise

    def _close(self, cancel_futures: bool) -> None:
        try:
            self._engine.shutdown(True, cancel_futures)
            if self._echo is not None:  # every result is in, and output travels ahead of its result
                self._echo.stop()
            if self._local is not None:  # the head has told them to leave
                self._local.stop()
        except BaseException as exc:
            self._close_error = exc
        finally:
            self._engine_done.set()

    def _shutdown_at_exit(self, interrupted: bool = False) -> None:
        """shutdown() at interpreter exit, which must end: it never waits for long after an interrupted
        shutdown or script (`interrupted`), nor for jobs that no compute server is there to run."""
        if self._interrupted or interrupted:
            self.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + _EXIT_GRACE
            if _wait_for(self._engine_done, _EXIT_GRACE):
                self._collector.join(max(0.0, deadline - time.monotonic()))  # it ends once idle
            else:
                print("dynexec: exiting without waiting for running jobs (interrupted)", file=sys.stderr)
            return
        self.shutdown(wait=False)
        lonely_since = None
        while not _wait_for(self._engine_done, 0.25):
            with self._lock:
                waiting = len(self._futures)
            try:
                lonely = waiting > 0 and not self._engine.servers()
            except Exception:  # e.g. a cluster no longer answering: that is not "no servers"
                lonely = False
            if not lonely:
                lonely_since = None
            elif lonely_since is None:
                lonely_since = time.monotonic()
            elif time.monotonic() - lonely_since > _NO_SERVER_GRACE:
                print(f"dynexec: at exit, no compute server is registered to run {waiting} waiting job(s); "
                      f"cancelled what had not started", file=sys.stderr)
                self.shutdown(wait=False, cancel_futures=True)
                lonely_since = float("inf")  # said once; the cancelled ones settle now
        _join(self._collector)


_EXIT_GRACE = 2.0  # seconds the exit hook gives running jobs after an interrupted shutdown
_NO_SERVER_GRACE = 3.0  # seconds jobs may wait at exit with no compute server registered (one may join)


def _wait_for(event: threading.Event, timeout: float | None = None) -> bool:
    """event.wait(timeout), in short slices so that Ctrl-C is seen at once."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))):
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


def _join(thread: threading.Thread) -> None:
    while thread.is_alive():
        thread.join(0.1)


class JobOptions:
    """An executor with options for the jobs submitted through it: see Executor.options()."""

    def __init__(self, executor: Executor, opts: tuple, notify: tuple[str, ...] = ()):
        self._executor, self._opts, self._notify = executor, opts, notify

    def submit(self, fn, /, *args, **kwargs) -> JobFuture:
        return self._executor._submit_fn(self._opts, fn, args, kwargs, self._notify)

    def submit_service(self, service: str, /, **params) -> JobFuture:
        return self._executor._submit_service(self._opts, service, params, self._notify)

    def submit_command(self, argv, /, *, env=None, cwd=None) -> JobFuture:
        return self._executor._submit_service(self._opts, "command", command_params(argv, env, cwd), self._notify)

    def map(self, fn, *iterables, timeout=None, chunksize=1, progress=False, futures=False):
        """As Executor.map; with chunksize > 1, the time limit is each chunk's."""
        return self._executor._map(self._opts, fn, iterables, timeout, chunksize, progress, self._notify, futures)

    def options(self, *, time_limit: float | None = None, retries: int | None = None, notify=None,
                label: str | None = None, tags=None) -> JobOptions:
        return JobOptions(self._executor, _job_options((self._opts[0] or None) if time_limit is None else time_limit,
                                                       self._opts[1] if retries is None else retries,
                                                       self._opts[2] if label is None else label,
                                                       self._opts[3] if tags is None else tags),
                          self._notify if notify is None else parse_targets(notify))

    def __repr__(self):
        extra = (f" label={self._opts[2]!r}" if self._opts[2] else "") + (
            f" tags={list(self._opts[3])!r}" if self._opts[3] else "")
        return f"<dynexec.JobOptions time_limit={self._opts[0] or None} retries={self._opts[1]}{extra}>"


def command_params(argv, env=None, cwd=None) -> dict:
    """The "command" service's parameters: argv and env as NUL-terminated bytes (NUL cannot occur in either)."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        raise TypeError("argv must be a list of arguments, e.g. ['./simulate', '--seed', '3'], not one string")
    args = [os.fsencode(a) for a in argv]
    if not args or not args[0]:
        raise ValueError("argv must name a program")
    entries = []
    for k, v in (env or {}).items():
        k, v = os.fsencode(k), os.fsencode(v)
        if not k or b"=" in k:
            raise ValueError(f"invalid environment variable name {k!r}")
        entries.append(k + b"=" + v)
    for part in args + entries:
        if b"\0" in part:
            raise ValueError(f"a NUL byte cannot be in a command's argument or environment: {part[:60]!r}")
    return {"argv": b"".join(a + b"\0" for a in args), "env": b"".join(e + b"\0" for e in entries),
            "cwd": os.fsdecode(cwd) if cwd is not None else ""}


def _job_options(time_limit, retries, label=None, tags=None) -> tuple:
    """(time_limit, retries, label, tags): the first two as the engine takes them; names what is wrong."""
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds or None, got {time_limit!r}")
    if not (isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0):
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    return (float(time_limit or 0.0), retries, *_jobinfo.check_label(label, tags))


def _on_broken(executor_ref):
    """What the supervisor of local servers calls once none can be had: pending and new jobs fail."""
    def broken(why: str) -> None:
        ex = executor_ref()
        if ex is None:
            return
        with ex._lock:
            ex._broken = why
        n = ex._engine.fail_pending("BrokenExecutor", why)
        sys.stderr.write(f"dynexec: {why}; {n} unfinished job(s) failed with BrokenExecutorError, new ones are "
                         f"refused\n")
    return broken


def _collect(executor_ref, engine, futures, early, lock, closing, engine_done):
    while True:
        batch = engine.poll_values(4096, 0.05)
        with lock:
            settle = []
            for job_id, pickled, raw in batch:
                future = futures.pop(job_id, None)
                if future is None:  # its submit has not registered it yet
                    early[job_id] = (pickled, raw)
                else:
                    settle.append((future, pickled, raw))
        _settle_all(settle)
        idle = not batch
        batch = settle = future = raw = pickled = None  # hold no result while polling: a user may drop it, and it may be large
        if idle:
            if engine_done.is_set():
                return
            if executor_ref() is None and not closing.is_set():  # dropped without shutdown(): close the engine
                closing.set()
                engine.shutdown(True, False)
                engine_done.set()


def _settle_all(settle) -> None:
    """Sets each (future, pickled, raw) from the collector's fast path."""
    loads = pickle.loads
    for future, pickled, raw in settle:
        try:
            if pickled is None:
                _settle(future, raw)  # not a success: raw is the whole result
            elif not future.cancelled():
                try:
                    value = loads(raw) if pickled else raw
                except Exception as exc:  # its class is not importable here: say so, naming the job
                    future.set_exception(_decode_error(future.job_id, exc))
                else:
                    future.set_result(value)
                value = None
        except BaseException as exc:  # whatever else goes wrong with one result fails its future, not this thread
            if not future.done():
                try:
                    future.set_exception(exc)
                except BaseException:
                    pass


def _cancel_many(engine, futures) -> None:
    """Cancels many jobs in one call into the engine (one release of the GIL, not one per job: with the
    collector busy, each would wait for the GIL again); those already started just say so."""
    pending, others = [], []
    for f in futures:
        (pending if f._state == PENDING else others).append(f)
    for future, ok in zip(pending, engine.cancel_many([f.job_id for f in pending])):
        future._cancelled(ok)
    for future in others:
        future.cancel()


def _tally(future: JobFuture, status: str) -> None:
    home = future._home
    with home.lock:
        home.tally[status] = home.tally.get(status, 0) + 1


def _settle(future: JobFuture, r: _core.Result) -> None:
    _tally(future, r.status)
    if r.status == "cancelled":
        with future._condition:
            if future._state == RUNNING:  # guessed started (the engine had cancelled it already): it never ran
                future._state = PENDING
        if Future.cancel(future) and future._state == CANCELLED:
            future.set_running_or_notify_cancel()
        return
    if future.cancelled():
        return
    result = Result.from_core(r)
    future.stdout, future.stderr = result.stdout, result.stderr
    if r.status == "ok" and result.decode_error is None:
        future.set_result(result.value)
    else:
        future.set_exception(result.exception())


_MAP_BATCH = 1024


def _in_order(futures: list[Future], end_time: float | None):
    """Results in submission order, as concurrent.futures' map yields them; cancels the rest if abandoned.
    Holds no reference to a future (nor its result) once yielded."""
    futures.reverse()
    try:
        while futures:
            yield _result_or_cancel(futures.pop(), None if end_time is None else end_time - time.monotonic())
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future, timeout: float | None):
    try:
        return future.result(timeout)
    finally:
        future.cancel()  # a no-op once done; stops it after a timeout


def _chunks(items, size):
    it = iter(items)
    while chunk := tuple(itertools.islice(it, size)):
        yield chunk


def _run_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


def _shutdown_all():
    # The script itself ended on Ctrl-C (Python sets last_type for an exception it reports at exit): it wants
    # out, not the rest of the backlog.
    interrupted = isinstance(getattr(sys, "last_type", None), type) and issubclass(sys.last_type, KeyboardInterrupt)
    try:
        executors = list(_live_executors)
        for ex in executors:
            ex._shutdown_at_exit(interrupted)
        if interrupted or any(ex._interrupted for ex in executors):
            if not all(ex._engine_done.is_set() and not ex._collector.is_alive() for ex in executors):
                _exit_now()
            return  # what it was told to stop waiting for, it does not wait for here either
        waited = {ex._collector for ex in executors}
        for collector in list(_collectors):  # those of dropped executors close their engines themselves
            if collector not in waited:
                _join(collector)
    except KeyboardInterrupt:  # Ctrl-C while exiting: exit now (local servers leave when this process is gone)
        print("dynexec: interrupted at exit; not waiting for running jobs", file=sys.stderr)
        _exit_now()


def _exit_now(code: int = 130) -> None:
    """Ends the process at once, as a shell reports Ctrl-C (128 + SIGINT): an engine still shutting down has
    threads that the interpreter's finalization and C++ static destructors would trip over (std::terminate).
    Local servers leave when they see this process gone."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _forget_all_in_child() -> None:
    """A child forked from this process (multiprocessing's fork, as ProcessPoolExecutor starts its workers)
    has none of the engines' threads: its exit must not wait for or shut down its parent's executors."""
    _live_executors.clear()
    _collectors.clear()


threading._register_atexit(_shutdown_all)  # before threads are joined at exit, as concurrent.futures does
os.register_at_fork(after_in_child=_forget_all_in_child)
