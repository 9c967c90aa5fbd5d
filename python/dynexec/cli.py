"""The `dynexec` command (also `python -m dynexec`).

    dynexec submit pi.monte_carlo samples=1000000        # a native service and its parameters
    dynexec submit mymodule:simulate 3 steps=10           # a Python callable: positional and keyword arguments
    dynexec submit --array 1-5 -- ./simulate --seed {index}   # a command; five jobs, {index} = 1..5
    dynexec status | ls | show JOB_ID | cancel JOB_ID | stop
    dynexec cluster|server|launch ...                      # python -m dynexec.cluster|server|launch, same options

A cluster is named by --connect FILE (its client connection file) or $DYNEXEC_CONNECT.

Exit codes (the same for every subcommand):
    0  done; with --wait, every job succeeded
    1  with --wait, a job failed (error, killed, timeout, cancelled, lost)
    2  usage: a bad option or argument
    3  cannot connect to the cluster, or no such job or result
    130 interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# `dynexec NAME ARGS...` runs MODULE.main(ARGS), with that module's own options and --help. One line each.
DELEGATED = {
    "cluster": ("dynexec.cluster", "run a cluster's head and servers, under mpirun (as python -m dynexec.cluster)"),
    "server": ("dynexec.server", "run one compute server joining a cluster (as python -m dynexec.server)"),
    "launch": ("dynexec.launch", "start a cluster with mpirun, fault tolerant (as python -m dynexec.launch)"),
    "gateway": ("dynexec.gateway", "run the HTTP gateway to a cluster (as python -m dynexec.gateway)"),
}

ARRAY_INDEX_ENV = "DYNEXEC_ARRAY_INDEX"


class CliError(Exception):
    """Ends the command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# -- parsing helpers --------------------------------------------------------------------------------

def parse_array(spec: str) -> list[int]:
    """'1-1000', '1-10:2', '1,3,5' (or a mix, '1-3,7'): the indices, in order, each once."""
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if not m or (m[2] and int(m[2]) < int(m[1])) or (m[3] and int(m[3]) < 1):
            raise CliError(f"--array {spec!r}: {part!r} is not an index, a range FIRST-LAST or FIRST-LAST:STEP "
                           f"(e.g. 1-1000, 1-10:2, 1,3,5)")
        first = int(m[1])
        out += range(first, int(m[2]) + 1, int(m[3] or 1)) if m[2] else [first]
    seen: set[int] = set()
    return [i for i in out if not (i in seen or seen.add(i))]


def scalar(text: str):
    """A parameter's value: a JSON scalar where it parses as one (3, 2.5, true, null, "x"), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (bool, int, float, str)) else text


def split_params(items: list[str], positional_ok: bool):
    args, kwargs = [], {}
    for item in items:
        key, eq, value = item.partition("=")
        if eq and key.isidentifier():
            kwargs[key] = scalar(value)
        elif positional_ok and not kwargs:
            args.append(scalar(item))
        else:
            raise CliError(f"{item!r}: expected NAME=VALUE" + (" (positional arguments come first)"
                                                                if positional_ok else ""))
    return args, kwargs


def load_callable(target: str):
    module, _, name = target.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module of the current directory, as `python -m` finds it
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise CliError(f"cannot import module {module!r} (of {target!r}): {e}", EXIT_NOT_FOUND) from None
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module!r} has no {name!r} (of {target!r})", EXIT_NOT_FOUND) from None
    if not callable(obj):
        raise CliError(f"{target!r} is not callable")
    return obj


def _jsonable(v):
    """A value for JSON output: scalars as they are, arrays as lists, anything else as its repr."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    tolist = getattr(v, "tolist", None)
    if callable(tolist):
        try:
            return tolist()
        except Exception:
            pass
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _dump(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_jsonable)
    sys.stdout.write("\n")


def _connection(a, required: bool):
    path = getattr(a, "connect", None) or os.environ.get("DYNEXEC_CONNECT") or None
    if required and not path:
        raise CliError("no cluster named: pass --connect FILE (a cluster's connection file) or set $DYNEXEC_CONNECT")
    return path


def _connect(a):
    import dynexec

    path = _connection(a, True)
    try:
        return dynexec.Executor(connect=path, wait=getattr(a, "wait_connect", 0.0))
    except (OSError, ValueError, RuntimeError) as e:  # missing or stale file, no head answering
        raise CliError(f"cannot connect to the cluster of {path}: {e}", EXIT_NOT_FOUND) from None


def _add_connect(p, what="the cluster"):
    p.add_argument("--connect", metavar="FILE", default=None,
                   help=f"{what}'s client connection file (default: $DYNEXEC_CONNECT)")


# -- submit -----------------------------------------------------------------------------------------

def _submit_parser(sub):
    p = sub.add_parser(
        "submit", help="submit a native service, a Python callable or a command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Submits jobs and prints their IDs (one a line, or JSON with --json).

  dynexec submit SERVICE [NAME=VALUE ...]         a native service, e.g. pi.monte_carlo samples=1000000
  dynexec submit MODULE:FUNCTION [ARG ...] [NAME=VALUE ...]   a Python callable (MODULE importable here)
  dynexec submit [options] -- PROGRAM [ARG ...]   a command (Executor.submit_command)

Values are JSON scalars where they parse as one (3, 2.5, true, null, "3"), else strings.
With --array SPEC (1-1000, 1-10:2, 1,3,5) one job per index: "{index}" in any argument or value is
replaced by it, and a command also gets it as $DYNEXEC_ARRAY_INDEX.

With --connect FILE (or $DYNEXEC_CONNECT) the jobs go to that cluster; without --wait the command exits
at once and the jobs keep running there, archived as usual (dynexec show JOB_ID, dynexec cancel JOB_ID).
Without a cluster a local Executor runs them (archive: --archive, $DYNEXEC_ARCHIVE or the default) and
--wait is implied: the command ends when they have.

Exit codes: 0 submitted (with --wait: all succeeded), 1 a job failed, 2 usage, 3 cannot connect / import.""")
    _add_connect(p)
    p.add_argument("--array", metavar="SPEC", help="one job per index: FIRST-LAST, FIRST-LAST:STEP or I,J,K")
    p.add_argument("--wait", action="store_true", help="wait for the jobs; exit 1 if any failed")
    p.add_argument("--json", action="store_true", help="print JSON: {\"jobs\": [{\"job_id\", \"index\", ...}]}")
    p.add_argument("--time-limit", type=float, default=None, metavar="S", help="seconds each job may run")
    p.add_argument("--retries", type=int, default=0, metavar="N", help="runs again a job that fails, N times")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a command's environment variable, over the server's (repeatable)")
    p.add_argument("--cwd", default=None, metavar="DIR", help="a command's working directory (default: the server's)")
    p.add_argument("--local", action="store_true", help="run here, on a local Executor, even with $DYNEXEC_CONNECT set")
    p.add_argument("--archive", default=None, metavar="DIR", help="without a cluster: the results archive")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="without a cluster: compute servers to start (default: jobs, at most the cores)")
    p.add_argument("target", nargs="?", help="SERVICE or MODULE:FUNCTION (none with -- PROGRAM ...)")
    p.add_argument("params", nargs="*", help="NAME=VALUE parameters; a callable also takes positional ARGs")
    p.set_defaults(run=_submit)
    return p


def _subst(text: str, index) -> str:
    return text if index is None else text.replace("{index}", str(index))


def _submit(a, command: list[str] | None) -> int:
    import dynexec

    if command is not None and a.target:
        raise CliError(f"give either a service or callable ({a.target!r}) or a command after --, not both")
    if command is None and not a.target:
        raise CliError("nothing to submit: give SERVICE, MODULE:FUNCTION or -- PROGRAM [ARG ...]")
    if command is not None and not command:
        raise CliError("no program after --")
    if command is None and (a.env or a.cwd):
        raise CliError("--env and --cwd are for a command (dynexec submit -- PROGRAM ...)")
    env = {}
    for item in a.env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"--env {item!r}: expected NAME=VALUE")
        env[key] = value
    indices = parse_array(a.array) if a.array else [None]
    fn = load_callable(a.target) if command is None and ":" in a.target else None
    if a.local and a.connect:
        raise CliError("--local and --connect: choose one")
    cluster = None if a.local else _connection(a, False)
    wait = a.wait or not cluster

    def one(ex, index):
        if command is not None:
            job_env = dict(env, **({ARRAY_INDEX_ENV: str(index)} if index is not None else {}))
            argv = [_subst(x, index) for x in command]
            return ex.submit_command(argv, env=job_env, cwd=_subst(a.cwd, index) if a.cwd else None)
        args, kwargs = split_params([_subst(x, index) for x in a.params], positional_ok=fn is not None)
        if fn is not None:
            return ex.submit(fn, *args, **kwargs)
        return ex.submit_service(a.target, **kwargs)

    if cluster:
        ex = _connect(a)
    else:
        workers = a.workers or max(1, min(len(indices), os.cpu_count() or 1))
        ex = dynexec.Executor(workers, archive=a.archive)
    opts = ex.options(time_limit=a.time_limit, retries=a.retries)
    try:
        futures = [(index, one(opts, index)) for index in indices]
    except (TypeError, ValueError, dynexec.InvalidJobError) as e:  # bad parameters: nothing more is sent
        ex.shutdown(wait=False, cancel_futures=True)
        raise CliError(f"cannot submit: {e}",
                       EXIT_NOT_FOUND if isinstance(e, dynexec.UnknownServiceError) else EXIT_USAGE) from None
    if not wait:
        # The head has every job once it answers a question asked after them: then this process may go, and
        # the jobs run and are archived without it (the head does not tie a job to its client's connection).
        ex._engine.state(futures[-1][1].job_id)
        if a.json:
            _dump({"jobs": [{"job_id": f.job_id, "index": i} for i, f in futures]})
        else:
            print("\n".join(f.job_id for _, f in futures))
        _leave_now(EXIT_OK)
    if a.json:
        rows = []
        for index, f in futures:
            rows.append({"job_id": f.job_id, "index": index, **_outcome(f)})
        ex.shutdown()
        _dump({"jobs": rows})
        return EXIT_OK if all(r["status"] == "ok" for r in rows) else EXIT_FAILED
    failed = 0
    for index, f in futures:
        out = _outcome(f)
        sys.stdout.write(out["stdout"])
        sys.stderr.write(out["stderr"])
        if out["status"] == "ok":
            print(f"{f.job_id}\tok\t{out['value']!r}" if command is None else f"{f.job_id}\tok", flush=True)
        else:
            failed += 1
            print(f"{f.job_id}\t{out['status']}\t{out['error_type']}: {out['message']}", flush=True)
    ex.shutdown()
    return EXIT_FAILED if failed else EXIT_OK


def _outcome(f) -> dict:
    """A finished future as the command reports it."""
    from concurrent.futures import CancelledError

    try:
        value = f.result()
    except CancelledError:
        return {"status": "cancelled", "value": None, "error_type": "CancelledError", "message": "cancelled",
                "stdout": f.stdout, "stderr": f.stderr}
    except BaseException as e:
        import dynexec

        status = {dynexec.JobTimeoutError: "timeout", dynexec.JobKilledError: "killed"}.get(type(e), "error")
        if isinstance(e, dynexec.ServerLostError):
            status = "lost"
        return {"status": status, "value": getattr(e, "returncode", None), "error_type": type(e).__name__,
                "message": str(e), "stdout": f.stdout, "stderr": f.stderr}
    return {"status": "ok", "value": _jsonable(value), "error_type": "", "message": "", "stdout": f.stdout,
            "stderr": f.stderr}


def _leave_now(code: int) -> None:
    """Exits without waiting for the submitted jobs (an Executor's exit hook would wait for them)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


# -- status, cancel, stop ---------------------------------------------------------------------------

def _status(a, _) -> int:
    import time

    with _connect(a) as ex:
        st = ex.status()
        stats = ex.stats()
    st["stats"] = stats
    if a.json:
        _dump(st)
        return EXIT_OK
    now = time.time()
    print(f"{len(st['servers'])} server(s); jobs running {st['running']}, queued on servers {st['queued']}, "
          f"waiting {sum(st['waiting'].values())}; submitted {stats['submitted']}, delivered {stats['delivered']}")
    if st["servers"]:
        print(f"{'SERVER':<12} {'HOST':<16} {'PID':>8} {'LEASE':>7} {'RUNNING':>7} {'DONE':>6} {'BUSY_S':>8}")
    for s in st["servers"]:
        t = s.get("statistics", {})
        print(f"{s['id']:<12} {s['host']:<16} {s['pid']:>8} {s['lease_expiry'] - now:>6.1f}s "
              f"{t.get('in_flight', 0):>7} {t.get('jobs_done', 0):>6} {t.get('busy_time', 0.0):>8.1f}")
    for why in st["why"]:
        print(f"note: {why}")
    return EXIT_OK


def _cancel(a, _) -> int:
    with _connect(a) as ex:
        engine = ex._engine
        outcome = {}
        for job_id in a.job_ids:
            if engine.cancel(job_id):
                outcome[job_id] = "cancelled"
            elif not a.no_kill and engine.kill(job_id):
                outcome[job_id] = "killed"
            else:
                outcome[job_id] = "not found"
    if a.json:
        _dump(outcome)
    else:
        for job_id, what in outcome.items():
            print(f"{job_id}\t{what}" + ("  (finished already, or not a job of this cluster)"
                                         if what == "not found" else ""))
    return EXIT_NOT_FOUND if "not found" in outcome.values() else EXIT_OK


def _stop(a, _) -> int:
    ex = _connect(a)
    ex.shutdown_cluster()
    if not a.quiet:
        print(f"stopped the cluster of {_connection(a, True)}")
    return EXIT_OK


# -- the archive: ls, show --------------------------------------------------------------------------

def _archive_of(a) -> Path:
    import dynexec

    if getattr(a, "archive", None):
        return Path(a.archive)
    conn = _connection(a, False)
    if conn:
        from . import connection

        try:
            info = connection.read(conn, role="client")
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read {conn}: {e}", EXIT_NOT_FOUND) from None
        if info.get("archive"):
            return Path(info["archive"])
    return dynexec.default_archive()


def _session_files(archive: Path) -> list[Path]:
    import dynexec

    sessions = getattr(dynexec, "sessions", None)  # the archive's own listing, where this dynexec has one
    if sessions is not None:
        try:
            files = []
            for s in sessions(archive):
                path = s if isinstance(s, (str, os.PathLike)) else (
                    s.get("path") if isinstance(s, dict) else getattr(s, "path", None))
                if path:
                    files.append(Path(path))
            if files:
                return files
        except Exception:
            pass
    return sorted(archive.glob("*.h5"), key=lambda p: p.stat().st_mtime)


def _labels(rec) -> set[str]:
    """A record's labels and tags, where the archive has them (newer layouts)."""
    out = set()
    for key in ("label", "labels", "tags"):
        v = rec.get(key)
        if isinstance(v, str) and v:
            out.update(x for x in v.replace(",", " ").split() if x) if key != "label" else out.add(v)
        elif isinstance(v, (list, tuple, set)):
            out.update(str(x) for x in v)
        elif isinstance(v, dict):
            out.update(f"{k}={x}" for k, x in v.items())
            out.update(str(k) for k in v)
    return out


def _ls(a, _) -> int:
    import dynexec

    archive = _archive_of(a)
    if not archive.is_dir():
        raise CliError(f"no archive at {archive}", EXIT_NOT_FOUND)
    sessions = []
    for path in _session_files(archive):
        try:
            records = dynexec.read_archive(path)
        except (OSError, ValueError) as e:
            print(f"dynexec ls: skipping {path}: {e}", file=sys.stderr)
            continue
        jobs = []
        for rec in records.values():
            if a.status and rec.get("status") not in a.status:
                continue
            if a.label and not set(a.label) <= _labels(rec):
                continue
            jobs.append({k: rec.get(k) for k in ("job_id", "status", "service", "owner", "submit_time",
                                                 "start_time", "end_time", "error_type", "label", "tags")
                         if k in rec})
        if jobs or not (a.status or a.label):
            sessions.append({"session": path.stem, "file": str(path), "jobs": jobs})
    if a.json:
        _dump({"archive": str(archive), "sessions": sessions})
        return EXIT_OK
    import time

    for s in sessions:
        print(f"session {s['session']} ({len(s['jobs'])} job(s))")
        for j in s["jobs"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["submit_time"])) if j.get("submit_time") else ""
            took = (j["end_time"] - j["start_time"]) if j.get("end_time") and j.get("start_time") else None
            print(f"  {j['job_id']}  {j['status'] or '?':<9} {j['service'] or '':<16} {when}"
                  + (f"  {took:.2f}s" if took is not None else "")
                  + (f"  {j['error_type']}" if j.get("error_type") else ""))
    return EXIT_OK


def _show(a, _) -> int:
    import dynexec

    archive = _archive_of(a)
    try:
        r = dynexec.find(a.job_id, archive)
    except dynexec.ResultNotFoundError as e:
        raise CliError(str(e), EXIT_NOT_FOUND) from None
    except dynexec.InvalidJobError as e:
        raise CliError(f"{a.job_id!r}: {e}") from None
    try:
        value, decode = r.value, None
    except dynexec.ResultDecodeError as e:
        value, decode = None, str(e)
    fields = {"job_id": r.job_id, "status": r.status, "value": _jsonable(value), "error_type": r.error_type,
              "message": r.message, "traceback": r.traceback, "owner": r.owner, "service": r.service,
              "server": r.server, "submit_time": r.submit_time, "start_time": r.start_time, "end_time": r.end_time,
              "attempts": r.attempts, "location": r.location, "stdout": r.stdout, "stderr": r.stderr}
    for extra in ("label", "tags"):  # where the archive has them
        if hasattr(r, extra):
            fields[extra] = _jsonable(getattr(r, extra))
    if decode:
        fields["decode_error"] = decode
    if a.json:
        _dump(fields)
    else:
        import time

        for k, v in fields.items():
            if k in ("stdout", "stderr", "traceback") or v in ("", None) or (k.endswith("_time") and not v):
                continue
            if k.endswith("_time"):
                v = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v)) + f".{int(v % 1 * 1000):03d}"
            print(f"{k + ':':<13} {v!r}" if k == "value" else f"{k + ':':<13} {v}")
        if r.start_time and r.end_time:
            print(f"{'ran:':<13} {r.end_time - r.start_time:.3f} s")
        for k in ("stdout", "stderr", "traceback"):
            if fields[k]:
                print(f"--- {k} ---")
                sys.stdout.write(fields[k] if fields[k].endswith("\n") else fields[k] + "\n")
    return EXIT_OK if r.status == "ok" else EXIT_FAILED


# -- the command ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynexec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"dynexec {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    p.submit_parser = _submit_parser(sub)

    s = sub.add_parser("status", help="a cluster's servers (leases, load) and jobs")
    _add_connect(s)
    s.add_argument("--json", action="store_true", help="print JSON (Executor.status() and stats())")
    s.set_defaults(run=_status)

    s = sub.add_parser("ls", help="sessions and jobs of an archive",
                       description="Lists an archive's sessions and their jobs (dynexec.read_archive).")
    s.add_argument("--archive", metavar="DIR", help="the archive directory (default: the --connect cluster's, "
                                                    "else $DYNEXEC_ARCHIVE or the default archive)")
    _add_connect(s)
    s.add_argument("--status", action="append", choices=["ok", "error", "cancelled", "lost", "killed", "timeout"],
                   help="only jobs of this status (repeatable)")
    s.add_argument("--label", action="append", metavar="LABEL", help="only jobs with this label or tag (repeatable)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(run=_ls)

    s = sub.add_parser("show", help="one job's result: value, output, error, times",
                       description="Prints an archived result; exit 0 if the job succeeded, 1 if not, 3 if "
                                   "the archive has no such job.")
    s.add_argument("job_id")
    s.add_argument("--archive", metavar="DIR", help="the archive directory (default as for ls)")
    _add_connect(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(run=_show)

    s = sub.add_parser("cancel", help="cancel jobs of a cluster (kill them if running)",
                       description="Cancels jobs that have not started and kills running ones (a command's "
                                   "whole process group). Any client of the cluster may cancel any of its "
                                   "jobs: the cluster's client credentials are the access control. Exit 3 if "
                                   "a job was not found (finished already, or unknown).")
    s.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    _add_connect(s)
    s.add_argument("--no-kill", action="store_true", help="only cancel jobs that have not started")
    s.add_argument("--json", action="store_true", help="print JSON: {job_id: cancelled|killed|not found}")
    s.set_defaults(run=_cancel)

    s = sub.add_parser("stop", help="stop a cluster (Executor.shutdown_cluster)",
                       description="Stops the cluster: its jobs finish, its servers leave, its archive is closed.")
    _add_connect(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(run=_stop)

    for name, (module, help_) in DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)  # listed here; main() hands it its arguments
    return p


def _version() -> str:
    try:
        from . import __version__
        return __version__
    except Exception:
        return "?"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        code = module.main(argv[1:])
        return code if isinstance(code, int) else EXIT_OK
    command = None
    if argv and argv[0] == "submit" and "--" in argv:  # what follows -- is the command, never our options
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    p = _parser()
    try:
        if argv and argv[0] == "submit":  # options may come after the parameters too
            a = p.submit_parser.parse_intermixed_args(argv[1:], argparse.Namespace(command="submit"))
        else:
            a = p.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    if not getattr(a, "run", None):
        p.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return a.run(a, command)
    except CliError as e:
        print(f"dynexec {a.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("dynexec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when exiting flushes it
        return EXIT_OK
