"""The gateway's HTTP server (aiohttp): a JSON API over a cluster's client connection file, and the status page.

Each request names its user with a bearer token (users.py). The gateway submits for that user through an
Executor(connect=FILE, owner=USER) of its own (one per user, made on first use), so the archive records the
user as the owner of each job; a user sees and stops only jobs whose owner they are (others get 404, the
same answer as for a job that does not exist, so job IDs of other users are not even confirmed).
"""
from __future__ import annotations

import asyncio
import io
import json
import math
import os
import socket
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
from aiohttp import web

from .. import results as _results
from ..errors import (BrokenExecutorError, InvalidJobError, JobKilledError, JobTimeoutError, ResultNotFoundError,
                      ServerLostError, ShutDownError, UnknownServiceError)
from . import urls
from .urls import gateway_file_for, result_url
from .users import UsersFile

STATIC = Path(__file__).parent / "static"
MAX_JOBS = 10_000  # job records kept in memory; older ones are still found in the archive
INLINE_ELEMENTS = 1000  # arrays up to this size are also given as JSON lists
_JSON_TYPES = (str, int, float, bool)

# -- errors --------------------------------------------------------------------------------------------
def _error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, dumps=_dumps)


class _Bad(Exception):
    """A request the gateway refuses: its HTTP status and a message naming what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _plain(x):
    """x as JSON can hold it: NaN and infinities as strings, numpy scalars as numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return _plain(x.item())
    return x


def _dumps(obj) -> str:
    return json.dumps(_plain(obj), allow_nan=False)


def status_of(future) -> str:
    """A done future's archive status ("ok", "error", "cancelled", "killed", "timeout", "lost")."""
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    if exc is None:
        return "ok"
    if isinstance(exc, JobTimeoutError):
        return "timeout"
    if isinstance(exc, JobKilledError):
        return "killed"
    if isinstance(exc, CancelledError):
        return "cancelled"
    if isinstance(exc, (ServerLostError, BrokenExecutorError, ShutDownError)):
        return "lost"
    return "error"


class Job:
    """What the gateway knows of a job it submitted."""
    __slots__ = ("job_id", "user", "kind", "what", "params", "submitted", "future")

    def __init__(self, job_id, user, kind, what, params, future):
        self.job_id, self.user, self.kind, self.what, self.params = job_id, user, kind, what, params
        self.submitted, self.future = time.time(), future


class Gateway:
    """The state behind the app: the connection file, the users, one Executor per user, the jobs submitted."""

    def __init__(self, connect, users: UsersFile, archive=None, allow_commands: bool = False, wait: float = 0.0):
        self.connect = Path(connect)
        self.users = users
        self.allow_commands = allow_commands
        self.wait = wait
        self._archive = Path(archive) if archive else None
        if self._archive is None:
            try:
                info = json.loads(self.connect.read_text())
                self._archive = Path(info["archive"]) if info.get("archive") else None
            except (OSError, ValueError, TypeError):
                pass  # Executor(connect=) says what is wrong with the file, without printing a secret
        self._executors: dict = {}
        self._executor_lock = threading.Lock()
        self.jobs: dict[str, Job] = {}  # job ID -> Job, in submission order
        self._jobs_lock = threading.Lock()

    # -- executors (blocking: called in threads) ---------------------------------------------------------
    def executor(self, user: str):
        with self._executor_lock:
            ex = self._executors.get(user)
            if ex is None:
                from ..executor import Executor
                ex = self._executors[user] = Executor(connect=self.connect, owner=user, wait=self.wait)
            return ex

    def drop(self, user: str, ex) -> None:
        """Forgets `user`'s executor after the cluster failed it (its head gone): the next request connects
        afresh, to a cluster restarted with the same connection file."""
        with self._executor_lock:
            if self._executors.get(user) is ex:
                del self._executors[user]
            else:
                return
        try:
            ex.shutdown(wait=False)
        except Exception:
            pass

    def close(self) -> None:
        with self._executor_lock:
            executors, self._executors = list(self._executors.values()), {}
        for ex in executors:
            try:
                ex.shutdown(wait=False)  # unfinished jobs go on in the cluster; their results are archived
            except Exception:
                pass

    @property
    def archive(self) -> Path | None:
        return self._archive

    def remember(self, job: Job) -> None:
        with self._jobs_lock:
            self.jobs[job.job_id] = job
            if len(self.jobs) > MAX_JOBS:  # forget the oldest finished ones (the archive has them)
                for job_id in [j for j, rec in self.jobs.items() if rec.future.done()][:len(self.jobs) - MAX_JOBS]:
                    del self.jobs[job_id]

    def own_job(self, user: str, job_id: str) -> Job | None:
        with self._jobs_lock:
            job = self.jobs.get(job_id)
        return job if job is not None and job.user == user else None

    def own_jobs(self, user: str) -> list[Job]:
        with self._jobs_lock:
            return [j for j in self.jobs.values() if j.user == user]

    def archived(self, user: str, job_id: str):
        """The archived Result of one of `user`'s jobs; _Bad(404) when there is none or it is another's."""
        if self._archive is None:
            raise _Bad(404, f"no job {job_id} of yours is known here (and this gateway has no archive to look in)")
        try:
            r = _results.find(job_id, self._archive)
        except InvalidJobError as e:
            raise _Bad(400, f"job_id: {e}") from None
        except (ResultNotFoundError, OSError, ValueError):
            r = None
        if r is None or r.owner != user:  # another user's job reads as one that does not exist
            raise _Bad(404, f"no job {job_id} of yours")
        return r


# -- describing jobs and values ------------------------------------------------------------------------
def _job_view(job: Job, state: str | None) -> dict:
    f = job.future
    status = status_of(f) if f.done() else (state or "queued")
    out = {"job_id": job.job_id, "owner": job.user, "kind": job.kind, job.kind: job.what, "params": job.params,
           "submit_time": job.submitted, "status": status, "url": result_url(job.job_id)}
    if f.done() and status not in ("ok", "cancelled"):
        exc = f.exception()
        out["error"] = {"type": type(exc).__name__, "message": str(exc)}
    return out


def _archived_view(r) -> dict:
    kind = "command" if r.service == "command" else "service"
    out = {"job_id": r.job_id, "owner": r.owner, "kind": kind, kind: r.service, "status": r.status,
           "submit_time": r.submit_time, "start_time": r.start_time, "end_time": r.end_time,
           "server": r.server, "location": r.location, "url": result_url(r.job_id)}
    if r.status != "ok":
        out["error"] = {"type": r.error_type, "message": r.message}
    return out


def _value_view(job_id: str, value) -> dict:
    if isinstance(value, np.ndarray):
        url = result_url(job_id)
        return {"kind": "array", "dtype": str(value.dtype), "shape": list(value.shape),
                "value": value.tolist() if value.size <= INLINE_ELEMENTS and value.dtype.kind in "biuf" else None,
                "download": {"npy": f"{url}?format=npy", "h5": f"{url}?format=h5"}}
    if value is None or isinstance(value, _JSON_TYPES) or isinstance(value, np.generic):
        return {"kind": type(value).__name__ if not isinstance(value, np.generic) else "number", "value": value}
    if isinstance(value, (list, tuple, dict)):
        try:
            _dumps(value)
            return {"kind": type(value).__name__, "value": value}
        except (TypeError, ValueError):
            pass
    if isinstance(value, bytes):
        return {"kind": "bytes", "size": len(value), "value": None}
    return {"kind": type(value).__name__, "value": None, "repr": repr(value)[:10_000]}


def _array_download(job_id: str, value, fmt: str, owner: str, service: str) -> web.Response:
    if not isinstance(value, np.ndarray):
        raise _Bad(400, f"format: job {job_id}'s value is a {type(value).__name__}, not an array: ask for JSON "
                        f"(no format=)")
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, value, allow_pickle=False)
        kind = "application/octet-stream"
    else:
        import h5py
        with h5py.File(buf, "w") as f:  # one dataset, as the archive keeps a large value (/values/<job_id>)
            d = f.create_dataset("value", data=value)
            d.attrs["job_id"], d.attrs["owner"], d.attrs["service"] = job_id, owner, service or ""
        kind = "application/x-hdf5"
    return web.Response(body=buf.getvalue(), content_type=kind,
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.{fmt}"'})


# -- reading requests ------------------------------------------------------------------------------------
async def _json_body(request) -> dict:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as e:
        raise _Bad(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise _Bad(400, "the body must be a JSON object, e.g. {\"service\": \"pi.monte_carlo\", \"params\": {}}")
    return body


def _param(name: str, v):
    """A JSON parameter value as a service takes it: a list of numbers becomes a numpy array."""
    if v is None or isinstance(v, _JSON_TYPES):
        return v
    if isinstance(v, list):
        try:
            a = np.asarray(v)
        except ValueError:  # ragged
            a = None
        if a is not None and a.dtype.kind in "biuf" and a.size:
            return a
        raise _Bad(400, f"params.{name}: a list must be a non-empty (nested, rectangular) list of numbers")
    raise _Bad(400, f"params.{name} must be a number, string, boolean or a list of numbers, got an object")


def _options(body: dict) -> dict:
    opts = {}
    if body.get("time_limit") is not None:
        t = body["time_limit"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise _Bad(400, f"time_limit must be a positive number of seconds, got {t!r}")
        opts["time_limit"] = float(t)
    if body.get("retries") is not None:
        r = body["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise _Bad(400, f"retries must be an integer >= 0, got {r!r}")
        opts["retries"] = r
    return opts


# Engine services a gateway user may not name: a Python job's payload is a pickle (it would run on the servers),
# and a command is submitted as {"command": [...]}, which --allow-commands governs.
_NOT_SERVICES = {"python": "Python callables cannot be submitted through the gateway; name a native service",
                 "command": "submit a command as {\"command\": [argv...]}, not as the service 'command'"}
_FIELDS = {"service", "params", "command", "env", "cwd", "time_limit", "retries"}


def _submission(body: dict, allow_commands: bool):
    """(kind, what, params-for-the-record, submit(ex) -> future) from a request body; _Bad names what is wrong."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _Bad(400, f"unknown field {unknown[0]!r} (the fields are: {', '.join(sorted(_FIELDS))})")
    opts = _options(body)
    if ("service" in body) == ("command" in body):
        raise _Bad(400, "give either 'service' (a name) or 'command' (a list of strings)")
    if "service" in body:
        service = body["service"]
        if not isinstance(service, str) or not service:
            raise _Bad(400, f"service must be a service name (a non-empty string), got {service!r}")
        if service in _NOT_SERVICES:
            raise _Bad(400, f"service: {_NOT_SERVICES[service]}")
        if set(body) & {"env", "cwd"}:
            raise _Bad(400, "env and cwd belong to a command, not a service")
        params = body.get("params", {})
        if not isinstance(params, dict):
            raise _Bad(400, "params must be a JSON object of the service's parameters")
        values = {str(k): _param(k, v) for k, v in params.items()}

        def submit(ex):
            return (ex.options(**opts) if opts else ex).submit_service(service, **values)
        return "service", service, params, submit
    argv, env, cwd = body["command"], body.get("env"), body.get("cwd")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise _Bad(400, "command must be a non-empty list of strings (argv)")
    if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise _Bad(400, "env must be an object of strings")
    if cwd is not None and not isinstance(cwd, str):
        raise _Bad(400, "cwd must be a string (a directory on the compute server)")
    if "params" in body:
        raise _Bad(400, "params belong to a service; a command takes its arguments in 'command'")
    if not allow_commands:
        raise _Bad(403, "this gateway does not run commands (they run as the cluster's user): start it with "
                        "--allow-commands")

    def submit(ex):
        if not hasattr(ex, "submit_command"):
            raise _Bad(501, "this dynexec has no command jobs (Executor.submit_command); submit a service")
        target = ex.options(**opts) if opts else ex
        if not hasattr(target, "submit_command"):
            target = ex
        return target.submit_command(argv, env=env, cwd=cwd)
    return "command", argv, {"env": env, "cwd": cwd}, submit


# -- the app ---------------------------------------------------------------------------------------------
def _token_of(request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


@web.middleware
async def _auth(request, handler):
    # /jobs/ID[/result] (a result's URL) is the API for a request with a token, the page for a browser.
    if request.path.startswith("/api/") or (request.path.startswith("/jobs/") and "Authorization" in request.headers):
        user = request.app["gateway"].users.user_of(_token_of(request))
        if user is None:
            return web.json_response({"error": "a valid bearer token is needed (Authorization: Bearer TOKEN)"},
                                     status=401, headers={"WWW-Authenticate": 'Bearer realm="dynexec"'})
        request["user"] = user
    try:
        return await handler(request)
    except _Bad as e:
        return _error(e.status, str(e))


async def _headers(request, response):
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
    if request.path.startswith(("/api/", "/jobs/")):
        h.setdefault("Cache-Control", "no-store")


def _run(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _executor(request):
    gw, user = request.app["gateway"], request["user"]
    try:
        return await _run(gw.executor, user)
    except Exception as e:  # the cluster is gone or the file is wrong: say so (the message holds no secret)
        raise _Bad(503, f"cannot reach the cluster of {gw.connect}: {e}") from None


async def whoami(request):
    return web.json_response({"user": request["user"]})


async def servers(request):
    ex = await _executor(request)
    try:
        status = await _run(ex.status)
    except Exception as e:
        request.app["gateway"].drop(request["user"], ex)
        raise _Bad(503, f"the cluster does not answer: {e}") from None
    now = time.time()
    out = []
    for s in status["servers"]:
        out.append({"id": s["id"], "host": s["host"], "pid": s["pid"], "lease_expiry": s["lease_expiry"],
                    "lease_left": round(s["lease_expiry"] - now, 3), "services": sorted(s["services"]),
                    "statistics": s["statistics"]})
    return web.json_response({"servers": out, "running": status.get("running"), "queued": status.get("queued"),
                              "waiting": status.get("waiting"), "why": status.get("why")}, dumps=_dumps)


async def services(request):
    """The services the cluster's servers offer, with their parameters where this process knows them."""
    from .. import services as catalog
    ex = await _executor(request)
    offered = sorted({name for s in await _run(ex.servers) for name in s["services"]} - set(_NOT_SERVICES))
    known = catalog()
    return web.json_response({name: known.get(name, {"doc": "", "params": []}) for name in offered}, dumps=_dumps)


async def submit(request):
    gw, user = request.app["gateway"], request["user"]
    kind, what, params, send = _submission(await _json_body(request), gw.allow_commands)
    ex = await _executor(request)
    try:
        future = await _run(send, ex)
    except _Bad:
        raise
    except UnknownServiceError as e:
        raise _Bad(400, f"service: {e}") from None
    except (InvalidJobError, ValueError, TypeError) as e:
        raise _Bad(400, f"params: {e}") from None
    except Exception as e:
        gw.drop(user, ex)
        raise _Bad(503, f"cannot submit to the cluster: {type(e).__name__}: {e}") from None
    job = Job(future.job_id, user, kind, what, params, future)
    gw.remember(job)
    return web.json_response({"job_id": job.job_id, "url": result_url(job.job_id),
                              "status_url": f"{urls.base_url() or ''}/api/jobs/{job.job_id}"}, status=201, dumps=_dumps)


def _states(jobs):
    """Each unfinished job's state ("queued" or "running"): a call into the engine each, so in one thread."""
    return {j.job_id: ("running" if j.future.running() else "queued") for j in jobs if not j.future.done()}


async def list_jobs(request):
    gw, user = request.app["gateway"], request["user"]
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise _Bad(400, f"limit must be an integer, got {request.query['limit']!r}") from None
    if not 1 <= limit <= MAX_JOBS:
        raise _Bad(400, f"limit must be between 1 and {MAX_JOBS}")
    status = request.query.get("status")
    jobs = gw.own_jobs(user)[::-1]  # newest first
    if status is None:
        jobs = jobs[:limit]
    states = await _run(_states, jobs)
    views = [_job_view(j, states.get(j.job_id)) for j in jobs]
    if status is not None:
        views = [v for v in views if v["status"] == status][:limit]
    return web.json_response({"jobs": views}, dumps=_dumps)


async def job_status(request):
    gw, user, job_id = request.app["gateway"], request["user"], request.match_info["job_id"]
    job = gw.own_job(user, job_id)
    if job is not None:
        states = await _run(_states, [job])
        return web.json_response(_job_view(job, states.get(job_id)), dumps=_dumps)
    return web.json_response(_archived_view(await _run(gw.archived, user, job_id)), dumps=_dumps)


async def job_result(request):
    gw, user, job_id = request.app["gateway"], request["user"], request.match_info["job_id"]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "npy", "h5"):
        raise _Bad(400, f"format must be json, npy or h5, got {fmt!r}")
    job = gw.own_job(user, job_id)
    if job is not None:
        f = job.future
        if not f.done():
            states = await _run(_states, [job])
            return web.json_response({"job_id": job_id, "status": states.get(job_id, "queued"), "done": False},
                                     status=202, dumps=_dumps)
        status, service = status_of(f), job.what if job.kind == "service" else ""
        extra = {"stdout": getattr(f, "stdout", ""), "stderr": getattr(f, "stderr", "")}
        if status != "ok":
            return web.json_response({**_job_view(job, None), "done": True, **extra}, dumps=_dumps)
        value = f.result()
    else:
        r = await _run(gw.archived, user, job_id)
        status, service = r.status, r.service
        extra = {"stdout": r.stdout, "stderr": r.stderr}
        if status != "ok":
            return web.json_response({**_archived_view(r), "done": True, **extra}, dumps=_dumps)
        try:
            value = r.value
        except Exception as e:
            raise _Bad(500, f"job {job_id}'s value cannot be decoded here: {e}") from None
        extra.update(start_time=r.start_time, end_time=r.end_time, location=r.location)
    if fmt != "json":
        return _array_download(job_id, value, fmt, user, service)
    return web.json_response({"job_id": job_id, "status": "ok", "done": True, **_value_view(job_id, value), **extra},
                             dumps=_dumps)


async def cancel(request):
    gw, user, job_id = request.app["gateway"], request["user"], request.match_info["job_id"]
    job = gw.own_job(user, job_id)
    if job is None:
        await _run(gw.archived, user, job_id)  # 404 unless it is an archived job of this user's
        raise _Bad(409, f"job {job_id} has finished")
    if job.future.done():
        raise _Bad(409, f"job {job_id} has finished ({status_of(job.future)})")
    stopped = await _run(job.future.kill)  # one not started never will; a running one is stopped
    return web.json_response({"job_id": job_id, "stopped": bool(stopped)}, dumps=_dumps)


async def index(request):
    return web.FileResponse(STATIC / "index.html")


def _link(api_handler):
    async def handler(request):
        return await (api_handler(request) if "user" in request else index(request))
    return handler


async def _close(app):
    await _run(app["gateway"].close)


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=1 << 20)  # 1 MiB bodies at most
    app["gateway"] = gateway
    app.on_response_prepare.append(_headers)
    app.on_cleanup.append(_close)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/api/servers", servers)
    app.router.add_get("/api/services", services)
    app.router.add_post("/api/jobs", submit)
    app.router.add_get("/api/jobs", list_jobs)
    app.router.add_get("/api/jobs/{job_id}", job_status)
    app.router.add_get("/api/jobs/{job_id}/result", job_result)
    app.router.add_post("/api/jobs/{job_id}/cancel", cancel)
    app.router.add_delete("/api/jobs/{job_id}", cancel)
    app.router.add_get("/jobs/{job_id}", _link(job_status))
    app.router.add_get("/jobs/{job_id}/result", _link(job_result))
    return app


async def serve(gateway: Gateway, host: str, port: int, parent_pid: int | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Runs the gateway until `stop` is set, a signal, or (with parent_pid) that process is gone."""
    import signal
    runner = web.AppRunner(make_app(gateway))  # its access log names no token (the header is not logged)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    urls._base_url = base = f"http://{shown}:{bound[1]}"
    record = gateway_file_for(gateway.connect)
    try:
        record.write_text(json.dumps({"url": base, "pid": os.getpid(), "host": socket.gethostname()}))
    except OSError:
        record = None
    print(f"dynexec gateway at {base}/ for {gateway.connect} (users file {gateway.users.path})", flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if parent_pid and not _alive(parent_pid):
                print(f"dynexec gateway: process {parent_pid} (the cluster) is gone; stopping", file=sys.stderr,
                      flush=True)
                break
    finally:
        await runner.cleanup()
        urls._base_url = None
        if record is not None:
            try:
                if json.loads(record.read_text()).get("pid") == os.getpid():
                    record.unlink()
            except (OSError, ValueError):
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
