"""Notifications: an e-mail or a webhook POST when a job's result is ready.

    Executor(notify="mailto:me@example.org")              # every job of this executor
    ex.options(notify="https://hooks.example.org/dynexec").submit(fn, x)   # one job

A target is "mailto:ADDRESS[,ADDRESS...]" (an e-mail through the SMTP server of NotifyConfig) or an
"http://" / "https://" URL (a JSON POST; user:password in the URL become HTTP basic auth). They go out
after the result is archived and its future settled, from one background thread per executor with a
bounded queue: a slow or failing receiver never fails or delays a job. A failed delivery is logged
(logger "dynexec.notify") and tried again, `attempts` times in all, waiting retry_delay, then twice that,
and so on; a permanent failure (an SMTP 5xx reply such as a refused login, an HTTP 4xx) is not tried
again. At shutdown, what is still pending gets `shutdown_grace` seconds, then is logged as dropped.
With Executor(connect=...), this client process sends them. A cancelled job is not notified.
"""
from __future__ import annotations

import base64
import dataclasses
import email.message
import email.utils
import heapq
import itertools
import json
import logging
import os
import queue
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from concurrent.futures import CancelledError
from pathlib import Path

from .gateway.urls import result_url as gateway_result_url
from .errors import (BrokenExecutorError, InvalidJobError, JobKilledError, JobTimeoutError, ServerLostError,
                     ShutDownError)

log = logging.getLogger("dynexec.notify")

__all__ = ["NotifyConfig", "result_url", "parse_targets"]


def _env_bool(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return False
    if value in ("1", "yes", "true", "on"):
        return True
    raise ValueError(f"${name} must be 1/0, yes/no, true/false or on/off, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NotifyConfig:
    """Where notifications go out; NotifyConfig.from_env() reads the DYNEXEC_* variables named below.

    smtp_host, smtp_port: the SMTP server ($DYNEXEC_SMTP_HOST, default "localhost"; $DYNEXEC_SMTP_PORT,
        default 587 with STARTTLS, else 25).
    smtp_from: the sender ($DYNEXEC_SMTP_FROM, default "dynexec@<this host>").
    smtp_user, smtp_password: log in when smtp_user is set ($DYNEXEC_SMTP_USER, $DYNEXEC_SMTP_PASSWORD);
        the password is never shown (repr, logs, errors).
    smtp_starttls: upgrade the connection with STARTTLS before anything else ($DYNEXEC_SMTP_STARTTLS=1),
        checking the server's certificate against the system's CAs or smtp_cafile ($DYNEXEC_SMTP_CAFILE).
    gateway_url: the HTTP gateway's base URL ($DYNEXEC_GATEWAY_URL): results are linked as
        {gateway_url}/jobs/{job_id}/result; without it, as file:///<archive>/<session>.h5#<job_id>.
    attempts, retry_delay: tries per notification, and the first wait between them in seconds (doubling).
    timeout: seconds one try may take (connect, send). shutdown_grace: seconds pending notifications get at
        shutdown. queue_size: notifications waiting at most; past it, new ones are logged and dropped.
    """

    smtp_host: str = "localhost"
    smtp_port: int | None = None
    smtp_from: str | None = None
    smtp_user: str | None = None
    smtp_password: str | None = dataclasses.field(default=None, repr=False)
    smtp_starttls: bool = False
    smtp_cafile: str | None = None
    gateway_url: str | None = None
    attempts: int = 3
    retry_delay: float = 1.0
    timeout: float = 10.0
    shutdown_grace: float = 5.0
    queue_size: int = 10000

    def __post_init__(self):
        for name in ("attempts", "queue_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("retry_delay", "timeout", "shutdown_grace"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {getattr(self, name)!r}")
        if self.gateway_url is not None and urllib.parse.urlsplit(self.gateway_url).scheme not in ("http", "https"):
            raise ValueError(f"gateway_url must be an http:// or https:// URL, got {_redact(self.gateway_url)!r}")

    def __repr__(self):
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        return f"NotifyConfig({shown}, smtp_password={'***' if self.smtp_password else None})"

    @classmethod
    def from_env(cls, **overrides) -> NotifyConfig:
        """The configuration the DYNEXEC_SMTP_* and DYNEXEC_GATEWAY_URL variables give, then `overrides`."""
        env = os.environ.get
        port = env("DYNEXEC_SMTP_PORT")
        if port:
            try:
                port = int(port)
            except ValueError:
                raise ValueError(f"$DYNEXEC_SMTP_PORT must be a port number, got {port!r}") from None
        found = dict(smtp_host=env("DYNEXEC_SMTP_HOST") or "localhost", smtp_port=port or None,
                     smtp_from=env("DYNEXEC_SMTP_FROM") or None, smtp_user=env("DYNEXEC_SMTP_USER") or None,
                     smtp_password=env("DYNEXEC_SMTP_PASSWORD") or None,
                     smtp_starttls=_env_bool("DYNEXEC_SMTP_STARTTLS"), smtp_cafile=env("DYNEXEC_SMTP_CAFILE") or None,
                     gateway_url=env("DYNEXEC_GATEWAY_URL") or None)
        return cls(**{**found, **overrides})


def result_url(job_id: str, archive=None, gateway_url: str | None = None, location: str = "") -> str | None:
    """Where a job's result is: {gateway_url}/jobs/{job_id}/result when a gateway serves it, else the archive
    file that holds it (the file of Result.location, "<file>:/results[row]", or else <archive>/<session>.h5)
    as file:///...#<job_id> (dynexec.find(job_id, ARCHIVE) reads it); None when it is not archived."""
    if gateway_url:
        return gateway_result_url(job_id, base=gateway_url)
    if location:
        file = Path(location.split(":/", 1)[0])
    elif archive is not None:
        file = Path(archive) / f"{job_id.rpartition('-')[0]}.h5"
    else:
        return None
    return f"{file.absolute().as_uri()}#{job_id}"


# -- targets ---------------------------------------------------------------------------------------------
def _redact(text: str) -> str:
    """`text` as errors and logs may show it: no password in a URL's userinfo, no query or fragment."""
    try:
        parts = urllib.parse.urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{host}" if ":" in userinfo else netloc
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                                        "***" if parts.fragment else ""))
    except Exception:
        return "<a value that is not a URL>"


def _invalid(value, why: str) -> InvalidJobError:
    shown = repr(_redact(value)) if isinstance(value, str) else f"a {type(value).__name__}"
    return InvalidJobError(f"notify: {shown} {why}")


def parse_targets(notify) -> tuple[str, ...]:
    """notify= (None, a target, or a list of them) as a tuple of checked targets; InvalidJobError names
    a bad one (without the secrets a URL may hold)."""
    if notify is None:
        return ()
    values = [notify] if isinstance(notify, str) else notify
    if not isinstance(values, (list, tuple)):
        raise _invalid(notify, 'is not a target: give "mailto:ADDRESS", an http(s):// URL, or a list of them')
    for value in values:
        if not isinstance(value, str):
            raise _invalid(value, 'is not a target: give "mailto:ADDRESS" or an http(s):// URL')
        if any(c in value for c in "\r\n\0"):
            raise _invalid(value, "holds a line break or NUL")
        scheme = value.partition(":")[0].lower()
        if scheme == "mailto":
            _addresses(value)
        elif scheme in ("http", "https"):
            parts = urllib.parse.urlsplit(value)
            try:
                parts.port  # noqa: B018 (raises for a bad one)
            except ValueError:
                raise _invalid(value, "has a bad port") from None
            if not parts.hostname:
                raise _invalid(value, "names no host")
        else:
            raise _invalid(value, 'is not a target: give "mailto:ADDRESS" or an http(s):// URL')
    return tuple(values)


def _addresses(target: str) -> list[str]:
    rest = target[len("mailto:"):]
    if "?" in rest:
        raise _invalid(target, "has a query (?...): only the address(es) may be given")
    addresses = [urllib.parse.unquote(a).strip() for a in rest.split(",")]
    for a in addresses:
        name, addr = email.utils.parseaddr(a)
        local, at, domain = addr.rpartition("@")
        if not (at and local and domain and addr == a and not name and not any(c in a for c in " \r\n\0")):
            raise _invalid(target, f"has {a!r}, which is not an e-mail address")
    return addresses


# -- what is sent ----------------------------------------------------------------------------------------
_STATUS_OF = ((JobTimeoutError, "timeout"), (JobKilledError, "killed"), (ServerLostError, "lost"),
              (BrokenExecutorError, "lost"), (ShutDownError, "lost"), (CancelledError, "cancelled"))


_BIG_VALUE = 16 << 20  # bytes: reading such a value back from the archive only for its times is not worth it


def _big(value) -> bool:
    size = getattr(value, "nbytes", None)  # numpy arrays, memoryviews
    if size is None and isinstance(value, (bytes, bytearray, str)):
        size = len(value)
    return isinstance(size, int) and size > _BIG_VALUE


def _event(job_id: str, exc, archive, gateway_url, seen: tuple[float, float], read: bool) -> dict:
    """The notification's facts: the archived record when it is read (`read`; status, times, service), else
    what the future says, with the times this process saw (`seen`: submitted, settled)."""
    record = None
    if archive is not None and read:
        from . import _core
        try:
            record = _core.find(Path(archive), job_id)  # its value is not decoded, but read: see _BIG_VALUE
        except Exception as e:  # e.g. a cluster's archive on another host: say what the future knows
            log.debug("job %s: its archived result cannot be read here (%s)", job_id, e)
    ev = {"job_id": job_id, "status": "ok",
          "url": result_url(job_id, archive, gateway_url, record.location if record is not None else ""),
          "submit_time": seen[0], "start_time": None, "end_time": seen[1]}
    if record is not None:
        ev.update(status=record.status, service=record.service, owner=record.owner, server=record.server,
                  submit_time=record.submit_time, start_time=record.start_time, end_time=record.end_time,
                  attempts=record.attempts)
        if record.status != "ok":
            ev.update(error_type=record.error_type, error_message=record.message)
    elif exc is not None:
        ev["status"] = next((s for cls, s in _STATUS_OF if isinstance(exc, cls)), "error")
        ev.update(error_type=getattr(exc, "type_name", None) or type(exc).__name__,
                  error_message=getattr(exc, "message", None) or str(exc))
    return ev


def _when(t) -> str:
    return email.utils.formatdate(t, localtime=True) if t else "-"


def _mail(ev: dict, to: list[str], config: NotifyConfig) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["Subject"] = f"dynexec job {ev['job_id']}: {ev['status']}"
    msg["From"] = config.smtp_from or f"dynexec@{socket.getfqdn()}"
    msg["To"] = ", ".join(to)
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid("dynexec")
    lines = [f"Job:       {ev['job_id']}", f"Status:    {ev['status']}",
             f"Result:    {ev['url'] or 'not archived'}"]
    if ev.get("error_type") or ev.get("error_message"):
        lines.append(f"Error:     {ev.get('error_type')}: {ev.get('error_message')}")
    if "service" in ev:
        lines += [f"Service:   {ev['service']}", f"Owner:     {ev['owner']}", f"Submitted: {_when(ev['submit_time'])}",
                  f"Started:   {_when(ev['start_time'])}", f"Ended:     {_when(ev['end_time'])}"]
    if (ev["url"] or "").startswith("file:"):
        archive = str(Path(urllib.parse.unquote(urllib.parse.urlsplit(ev["url"]).path)).parent)
        lines.append(f"\nIn Python: dynexec.find({ev['job_id']!r}, {archive!r})")
    text = "\n".join(lines) + "\n"
    msg.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")  # 7bit: a URL stays whole
    return msg


def _send_mail(target: str, ev: dict, config: NotifyConfig) -> None:
    to = _addresses(target)
    port = config.smtp_port or (587 if config.smtp_starttls else 25)
    with smtplib.SMTP(config.smtp_host, port, timeout=config.timeout) as smtp:
        if config.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context(cafile=config.smtp_cafile))
        if config.smtp_user:
            smtp.login(config.smtp_user, config.smtp_password or "")
        smtp.send_message(_mail(ev, to, config))


def _post(target: str, ev: dict, config: NotifyConfig) -> None:
    parts = urllib.parse.urlsplit(target)
    headers = {"Content-Type": "application/json", "User-Agent": "dynexec-notify"}
    if parts.username is not None:  # userinfo is not sent as part of a URL: as basic auth it is
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode("ascii")
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request = urllib.request.Request(urllib.parse.urlunsplit(parts), data=json.dumps(ev).encode(), headers=headers,
                                     method="POST")
    with _opener.open(request, timeout=config.timeout) as reply:  # raises HTTPError for 3xx, 4xx, 5xx
        reply.read(1 << 16)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # not followed: urllib would resend the Authorization header to wherever it points


_opener = urllib.request.build_opener(_NoRedirect)


def _permanent(exc: Exception) -> bool:
    """A failure that trying again cannot mend (a refused login or address, a webhook's 3xx or 4xx)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    if isinstance(exc, urllib.error.HTTPError):
        return 300 <= exc.code < 500 and exc.code not in (408, 425, 429)
    return False


def _deliver(target: str, ev: dict, config: NotifyConfig) -> None:
    (_send_mail if target.lower().startswith("mailto:") else _post)(target, ev, config)


# -- the notifier thread ---------------------------------------------------------------------------------
_live: weakref.WeakSet[Notifier] = weakref.WeakSet()


class Notifier:
    """One executor's notifications: futures' done-callbacks queue them, a thread (started when there is work,
    ended when there is none) sends them."""

    def __init__(self, config: NotifyConfig, archive):
        self.config, self.archive = config, archive
        self._queue: queue.Queue = queue.Queue(config.queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending = 0  # queued, being sent, or waiting to be retried
        self._idle = threading.Condition(self._lock)
        self._deadline: float | None = None  # set by close(): what is not out by then is dropped
        self._closed = False
        _live.add(self)

    def watch(self, futures, targets: tuple[str, ...]) -> None:
        if targets:
            submitted = time.time()
            callback = lambda f: self._done(f, targets, submitted)  # noqa: E731
            for f in futures:
                f.add_done_callback(callback)

    def _done(self, future, targets, submitted: float) -> None:
        """A future's done-callback: runs where it was settled (the collector), so it only queues."""
        if future.cancelled():
            return
        exc = future.exception()
        item = (future.job_id, exc, targets, (submitted, time.time()), exc is not None or not _big(future.result()))
        with self._lock:
            if self._closed:
                log.warning("job %s: notification to %s dropped: the executor has shut down", item[0],
                            ", ".join(map(_redact, targets)))
                return
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                log.warning("job %s: notification to %s dropped: %d are waiting already", item[0],
                            ", ".join(map(_redact, targets)), self.config.queue_size)
                return
            self._pending += len(targets)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dynexec-notify", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        retries: list = []  # heap of (due, n, target, event, attempt)
        order = itertools.count()
        while True:
            with self._lock:
                now = time.monotonic()
                if self._deadline is not None and now >= self._deadline:
                    self._drop(retries)
                    return
                if not retries and self._queue.empty():
                    self._thread = None  # the next notification starts a new one
                    self._idle.notify_all()
                    return
            wait = retries[0][0] - now if retries else 0.5
            if self._deadline is not None:
                wait = min(wait, self._deadline - now)
            try:
                item = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                item = None
            if item is not None:  # None: close() woke this thread
                job_id, exc, targets, seen, read = item
                try:
                    ev = _event(job_id, exc, self.archive, self.config.gateway_url, seen, read)
                except Exception:  # never lose the thread: say what is known
                    log.exception("job %s: cannot describe its result", job_id)
                    ev = {"job_id": job_id, "status": "unknown", "url": None}
                for target in targets:
                    heapq.heappush(retries, (0.0, next(order), target, ev, 1))
                item = exc = None
            while retries and retries[0][0] <= time.monotonic():
                _, _, target, ev, attempt = heapq.heappop(retries)
                if not self._try(target, ev, attempt):
                    heapq.heappush(retries, (time.monotonic() + self.config.retry_delay * 2 ** (attempt - 1),
                                             next(order), target, ev, attempt + 1))
                    continue
                with self._lock:
                    self._pending -= 1
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    break

    def _try(self, target: str, ev: dict, attempt: int) -> bool:
        """One try; True when done with this notification (sent, or given up)."""
        try:
            _deliver(target, ev, self.config)
            log.debug("job %s: notified %s", ev["job_id"], _redact(target))
            return True
        except Exception as exc:
            permanent = _permanent(exc)
            last = permanent or attempt >= self.config.attempts
            log.warning("job %s: notifying %s failed (try %d of %d%s): %s: %s", ev["job_id"], _redact(target),
                        attempt, self.config.attempts, ", a permanent failure: giving up" if permanent else
                        ", giving up" if last else "", type(exc).__name__, exc)
            return last

    def _drop(self, retries) -> None:  # holds the lock
        dropped = [(t, ev["job_id"]) for _, _, t, ev, _ in retries]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                dropped += [(t, item[0]) for t in item[2]]
        for target, job_id in dropped:
            log.warning("job %s: notification to %s dropped at shutdown (not sent within %.3g s)", job_id,
                        _redact(target), self.config.shutdown_grace)
        self._pending -= len(dropped)
        self._thread = None
        self._idle.notify_all()

    def close(self, grace: float | None = None) -> None:
        """Refuses new notifications, gives the pending ones `grace` seconds (default: shutdown_grace), then
        drops (and logs) the rest. Returns within about grace seconds, also while a try is under way."""
        grace = self.config.shutdown_grace if grace is None else grace
        with self._lock:
            self._closed = True
            if self._deadline is None:
                self._deadline = time.monotonic() + grace
                try:
                    self._queue.put_nowait(None)  # wakes the thread, which may wait for a retry's time
                except queue.Full:
                    pass
            deadline = self._deadline
            while self._thread is not None and time.monotonic() < deadline + 0.2:
                self._idle.wait(max(0.01, deadline + 0.2 - time.monotonic()))
            if self._thread is not None and self._pending:  # stuck in a try: it drops the rest when it returns
                log.warning("%d notification(s) still being sent at shutdown, after %.3g s; not waiting for them",
                            self._pending, grace)


def _close_all() -> None:
    for notifier in list(_live):
        notifier.close()


# Runs after dynexec.executor's own exit hook (registered later, run first), once every future is settled.
threading._register_atexit(_close_all)
