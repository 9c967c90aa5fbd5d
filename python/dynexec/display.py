"""HTML (Jupyter's `_repr_html_`) and short text views of an Executor, a JobFuture and a Result.

Every value shown is html-escaped (a job's value or error message may hold markup) and cut to a bounded size
(a huge value is summarised, not dumped), and no view ever raises: a repr that throws breaks the notebook.
"""
from __future__ import annotations

import functools
import html
import reprlib
import time

MAX_VALUE = 300  # characters of a value's summary
MAX_TEXT = 2000  # characters of a message, traceback or output (its end: where the error is)
MAX_SERVERS = 50  # rows of the servers table
_FAILED = ("error", "lost", "killed", "timeout")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = MAX_VALUE
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def _never_raises(view):
    """What a view returns when it fails itself: one escaped line saying so, never an exception."""
    @functools.wraps(view)
    def safe(*args):
        try:
            return view(*args)
        except Exception as exc:
            what = f"{view.__name__} failed: {type(exc).__name__}: {_clip(str(exc), MAX_VALUE)}"
            return f"<pre>{html.escape(what)}</pre>" if view.__name__.endswith("html") else f"<{what}>"
    return safe


def _clip(text: str, limit: int, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"…[{cut} more characters]" + text[-limit:] if tail else text[:limit] + f"…[{cut} more characters]"


def summary(value, limit: int = MAX_VALUE) -> str:
    """A one-line summary of a value of any size: arrays and frames by type, dtype and shape (with a bounded
    preview), everything else a repr bounded by reprlib and `limit` characters."""
    try:
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if isinstance(shape, tuple) and hasattr(value, "__array__"):
            head = f"{type(value).__name__} {dtype} {shape}" if dtype is not None else f"{type(value).__name__} {shape}"
            try:
                import numpy as np
                if type(value) is np.ndarray:
                    head += " " + np.array2string(value, threshold=20, edgeitems=3, max_line_width=limit)
            except Exception:
                pass
            return _clip(head, limit)
        return _clip(_repr.repr(value), limit)
    except Exception as exc:  # its __repr__ raises
        return f"<{type(value).__name__} whose repr raises {type(exc).__name__}>"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}" if t else "—"


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _lease(left: float) -> str:
    return f"{left:.1f} s" if left >= 0 else f"expired {-left:.1f} s ago"


def _table(rows, header=None) -> str:
    out = ['<table style="border-collapse:collapse;text-align:left">']
    if header:
        out.append("<tr>" + "".join(f'<th style="text-align:left;padding:1px 8px">{_esc(h)}</th>' for h in header)
                   + "</tr>")
    for row in rows:
        cells = row if header else [f"<b>{_esc(row[0])}</b>", *row[1:]]
        out.append("<tr>" + "".join(f'<td style="text-align:left;padding:1px 8px">{c}</td>' for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _pre(text: str, limit: int = MAX_TEXT) -> str:
    return f'<pre style="margin:0;white-space:pre-wrap">{_esc(_clip(text, limit, tail=True))}</pre>'


def _details(title: str, text: str) -> str:
    return f"<details><summary>{_esc(title)}</summary>{_pre(text)}</details>" if text else ""


# -- an Executor ------------------------------------------------------------------------------------
def executor_facts(ex) -> dict:
    """What an executor's views show: status() (servers, running, queued, waiting, why), this executor's
    submitted/done/failed counts, its session, owner and archive, and whether it is shut down."""
    facts = {"session": ex.session, "owner": ex._owner, "archive": ex.archive, "shut_down": ex._closing.is_set()}
    facts.update(ex.status())
    stats = ex.stats()
    tally = dict(ex._home.tally)
    failed = sum(tally.get(s, 0) for s in _FAILED)
    facts.update(submitted=stats["submitted"], done=stats["delivered"], failed=failed,
                 cancelled=tally.get("cancelled", 0))
    return facts


@_never_raises
def executor_text(ex) -> str:
    if ex._closing.is_set():
        return f"<dynexec.Executor session={ex.session} shut down>"
    f = executor_facts(ex)
    return (f"<dynexec.Executor session={f['session']} servers={len(f['servers'])} running={f['running']} "
            f"queued={f['queued'] + sum(f['waiting'].values())} done={f['done']} failed={f['failed']} "
            f"archive={f['archive']}>")


@_never_raises
def executor_html(ex) -> str:
    f = executor_facts(ex)
    now = time.time()
    state = " (shut down)" if f["shut_down"] else ""
    out = [f"<div><b>dynexec.Executor</b>{state} — session <code>{_esc(f['session'])}</code>, owner "
           f"<code>{_esc(f['owner'])}</code>, archive <code>{_esc(f['archive'] or 'off')}</code></div>"]
    waiting = sum(f["waiting"].values())
    out.append(_table([["jobs", f"submitted {f['submitted']}, queued {f['queued']}, waiting {waiting}, running "
                        f"{f['running']}, done {f['done']}, failed {f['failed']}, cancelled {f['cancelled']}"]]))
    if f["why"]:
        out.append("<ul>" + "".join(f"<li>{_esc(w)}</li>" for w in f["why"][:10]) + "</ul>")
    servers = f["servers"]
    rows = []
    for s in servers[:MAX_SERVERS]:
        st = s.get("statistics", {})
        lease = s.get("lease_expiry") or 0
        last = st.get("last_completion")
        rows.append([f"<code>{_esc(s.get('id'))}</code>", _esc(s.get("host")), _esc(s.get("pid")),
                     _esc(_lease(lease - now) if lease else "—"), _esc(st.get("in_flight", 0)),
                     _esc(st.get("jobs_done", 0)), _esc(_seconds(st.get("busy_time") or 0.0)),
                     _esc(f"{now - last:.1f} s ago" if last else "—"),
                     f"<span title=\"{_esc(', '.join(s.get('services', [])))}\">{len(s.get('services', []))}</span>"])
    out.append(f"<div>{len(servers)} compute server(s)</div>")
    if rows:
        out.append(_table(rows, ["id", "host", "pid", "lease expires in", "in flight", "jobs done", "busy",
                                 "last completion", "services"]))
    if len(servers) > MAX_SERVERS:
        out.append(f"<div>… and {len(servers) - MAX_SERVERS} more</div>")
    return "".join(out)


# -- a JobFuture ------------------------------------------------------------------------------------
def _state(future) -> str:
    if future.cancelled():
        return "cancelled"
    if future.done():
        return "error" if future.exception() is not None else "ok"
    return "running" if future.running() else "pending"


def _archived(future):
    """The archived result's times, server and location (read once, kept small: not the value), or None."""
    kept = future.__dict__.get("_archived")
    if kept is not None or not future.done() or future.cancelled():
        return kept
    archive = future._home.archive
    if archive is None:
        return None
    from .results import find
    try:
        r = find(future.job_id, archive)
    except Exception:  # not archived (yet), or the archive is unreadable: the view says nothing of it
        return None
    kept = {k: getattr(r, k) for k in ("status", "server", "owner", "submit_time", "start_time", "end_time",
                                       "attempts", "location")}
    future.__dict__["_archived"] = kept
    return kept


def _times_rows(r) -> list:
    rows = [["submitted", _esc(_when(r["submit_time"]))]]
    if r["start_time"]:
        waited = r["start_time"] - r["submit_time"] if r["submit_time"] else 0.0
        rows.append(["started", _esc(f"{_when(r['start_time'])} (waited {_seconds(max(0.0, waited))})")])
    if r["end_time"] and r["start_time"]:
        ran = max(0.0, r["end_time"] - r["start_time"])
        rows.append(["ended", _esc(f"{_when(r['end_time'])} (ran {_seconds(ran)})")])
    return rows


@_never_raises
def future_html(future) -> str:
    state = _state(future)
    rows = [["job", f"<code>{_esc(future.job_id)}</code>"], ["status", f"<b>{_esc(state)}</b>"]]
    if state == "ok":
        rows.append(["value", f"<code>{_esc(summary(future.result()))}</code>"])
    elif state == "error":
        exc = future.exception()
        rows.append(["error", f"<code>{_esc(type(exc).__name__)}: {_esc(_clip(str(exc), MAX_VALUE))}</code>"])
    r = _archived(future)
    if r is not None:
        rows += _times_rows(r)
        rows += [["server", _esc(r["server"])], ["attempts", _esc(r["attempts"])],
                 ["archived", f"<code>{_esc(r['location'])}</code>"]]
    extra = _details("stdout", future.stdout) + _details("stderr", future.stderr)
    return "<div><b>dynexec.JobFuture</b></div>" + _table(rows) + extra


# -- a Result ---------------------------------------------------------------------------------------
@_never_raises
def result_html(r) -> str:
    rows = [["job", f"<code>{_esc(r.job_id)}</code>"], ["status", f"<b>{_esc(r.status)}</b>"]]
    if r.decode_error is not None:
        rows.append(["value", f"<i>cannot be decoded here: {_esc(_clip(str(r.decode_error), MAX_VALUE))}</i>"])
    elif r.status == "ok":
        rows.append(["value", f"<code>{_esc(summary(r.__dict__['value']))}</code>"])
    if r.status != "ok" and (r.error_type or r.message):
        rows.append(["error", f"<code>{_esc(r.error_type)}: {_esc(_clip(r.message, MAX_VALUE))}</code>"])
    rows += [["service", _esc(r.service)], ["owner", _esc(r.owner)], ["server", _esc(r.server)],
             *_times_rows(r.__dict__), ["attempts", _esc(r.attempts)], ["archived", f"<code>{_esc(r.location)}</code>"]]
    extra = _details("traceback", r.traceback) + _details("stdout", r.stdout) + _details("stderr", r.stderr)
    return "<div><b>dynexec.Result</b></div>" + _table(rows) + extra
