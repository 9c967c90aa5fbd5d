"""dynexec against its peers on the same work, with the same number of worker processes, in one run.

    .venv/bin/python bench/compare.py                        # all workloads, all peers, 2 workers
    .venv/bin/python bench/compare.py --quick                # a smoke run (CI): small counts, dynexec + processpool
    .venv/bin/python bench/compare.py --only tiny,latency --peers dynexec,dask --workers 4 --out /tmp/cmp

Peers (W worker processes each):
  dynexec      dynexec.Executor(max_workers=W, archive=<fresh temp dir>): every result archived in HDF5
  processpool  concurrent.futures.ProcessPoolExecutor(W)
  mpi4py       mpi4py.futures.MPIPoolExecutor under `mpirun -n W+1 -m mpi4py.futures` (rank 0 submits,
               the other W ranks are the pool; loopback only)
  dask         dask.distributed Client(LocalCluster(n_workers=W, threads_per_worker=1, processes=True))

Workloads (all peers): tiny (jobs/s of x+1, the function defined in __main__ as users write it, and an
importable one beside it), latency (sequential round trips, p50/p99), map (items/s,
chunksize 1 and the best of a sweep), cpu (efficiency on 5 ms pure-Python jobs), skewed (efficiency on
Pareto-distributed job lengths). dynexec only: native (the C++ "noop" service in one process, archive off
and on), archive (small and large results, against dd on the same disk; find by ID), backlog (memory per
queued job, drain rate), elasticity (a server added under backlog; a server killed with SIGKILL).
cluster (dynexec, mpi4py, dask; not in --quick's default peers): each as a cluster of W compute processes
started as its users start one: `mpirun -n W+1 python -m dynexec.cluster` and Executor(connect=FILE);
MPIPoolExecutor under `mpirun -n W+1 python -m mpi4py.futures`; a dask scheduler and `dask_worker
--nworkers W` over TCP and Client(scheduler_file=...); tiny jobs, map chunksize 1, round trips.

How: dynexec archives every result unless a figure says "archive off". Workers are warmed up before any
timing. cpu and skewed jobs are pure-Python busy loops on time.perf_counter, so a job is the same length
for every peer whatever the speed of this (shared) machine's cores; "job CPU share" is the CPU time the
jobs got over W x makespan, lower when the workers had to wait for a core. Every result is checked.
kill -9 is measured twice: with an idle survivor (lease expiry to re-run, nothing else in the way) and with
a busy one (many 50 ms jobs: a re-run also waits behind the survivor's own queue).

Each peer runs in a child process of its own (`compare.py --child PEER ...`), and each dynexec-only
workload in another, all under a wall-clock limit: a peer that cannot start, hangs or crashes is
reported in the table and the JSON with the reason, and the rest still runs. Children write their
figures after every workload, so one that is killed keeps what it had measured.

If build/bench/dynexec_native_bench exists, it is run with --json and the JSON object it prints is kept
under "cpp_bench" in the results. The targets read these keys from it when present:
native_cpp.jobs_per_s_archive_off, native_cpp.jobs_per_s_archive_on, backlog.bytes_per_job,
backlog.drain_jobs_per_s, elasticity_new_server.first_job_ms.

Outputs: a table on stdout (figures, ratios dynexec/peer, targets with pass/miss), <out>/compare.json
(all figures, machine, versions, date, arguments) and <out>/compare.png (one panel per workload).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime
import json
import os
import pickle
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:  # under `-m mpi4py.futures` the script's folder is not always on the path
    sys.path.insert(0, str(BENCH))
import _workloads as wl  # noqa: E402  (after the path is set)

PEERS = ("dynexec", "processpool", "mpi4py", "dask")
QUICK_PEERS = ("dynexec", "processpool")  # those that start in about a second
SHORT = {"dynexec": "dx", "processpool": "pp", "mpi4py": "mpi", "dask": "dask"}
COMMON = ("tiny", "latency", "map", "cpu", "skewed")
DYNEXEC_ONLY = ("native", "archive", "backlog", "elasticity")
CLUSTER = ("cluster",)  # each peer as a cluster of its own kind: dynexec, mpi4py and dask (not processpool)
CLUSTER_PEERS = ("dynexec", "mpi4py", "dask")
WORKLOADS = COMMON + DYNEXEC_ONLY + CLUSTER
CPP_BENCH = ROOT / "build" / "bench" / "dynexec_native_bench"
# Open MPI as root, and on loopback only: the benchmark must never reach for another interface.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo"}

SIZES = {
    "full": dict(tiny=20_000, latency=2_000, map=100_000, map_dask_cs1=5_000, chunksizes=(10, 100, 1000),
                 cluster_jobs=10_000, cluster_latency=500,
                 cpu_jobs=400, cpu_seconds=0.005, skewed_jobs=200, native=20_000, find=200,
                 large_jobs=16, large_mib=64, dd_mib=1024, backlog=200_000,
                 new_server_jobs=2_000, kill_jobs=100, timeout=600,
                 cpp_jobs=1_000_000, cpp_backlog=1_000_000, cpp_new_server_jobs=500),
    "quick": dict(tiny=500, latency=100, map=2_000, map_dask_cs1=500, chunksizes=(10, 100),
                  cluster_jobs=300, cluster_latency=50,
                  cpu_jobs=20, cpu_seconds=0.002, skewed_jobs=20, native=2_000, find=50,
                  large_jobs=2, large_mib=4, dd_mib=32, backlog=5_000,
                  new_server_jobs=200, kill_jobs=0, timeout=120,
                  cpp_jobs=20_000, cpp_backlog=20_000, cpp_new_server_jobs=50),
}
SKEW = dict(alpha=1.5, mean_s=0.010, cap_s=0.200, seed=20240601)  # Pareto job lengths, same for every peer
WARMUP_PER_WORKER = 20
NEW_SERVER_JOB_S = 0.002
KILL_JOB_S, KILL_LEASE_S = 0.050, 1.0


def inc_main(x):
    """The headline tiny job: a function of __main__, as users write them (a script, a notebook cell). In
    every child compare.py is the __main__ module, so dynexec and dask pickle this by value."""
    return x + 1


@dataclasses.dataclass
class Ctx:
    """What every workload needs: the peer's name, W, the sizes and a scratch folder."""
    peer: str
    workers: int
    sizes: dict
    tmp: Path


def check(ok: bool, what: str) -> None:
    if not ok:  # a benchmark that returns wrong answers measures nothing
        raise RuntimeError(what)


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def write_json(path: Path, obj) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)  # a reader never sees half a file, even if this process is killed


# -- peers --------------------------------------------------------------------------------------------
class FuturesPeer:
    """dynexec, ProcessPoolExecutor and MPIPoolExecutor: all concurrent.futures executors."""

    def __init__(self, executor):
        self.ex = executor

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def gather(self, futures):
        return [f.result() for f in futures]

    def map(self, fn, items, chunksize):
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def shutdown(self):
        self.ex.shutdown(wait=True)


class DaskPeer:
    def __init__(self, workers: int, client=None):
        import logging

        from distributed import Client, LocalCluster
        self.cluster = None
        if client is None:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(self.cluster)
        self.client = client
        self.client.wait_for_workers(workers, timeout=60)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)  # pure=False: every call is a new task, not a cache hit

    def gather(self, futures):
        return self.client.gather(futures)

    def map(self, fn, items, chunksize):
        items = list(items)
        if chunksize == 1:
            return self.client.gather(self.client.map(fn, items, pure=False))
        # dask's map has no chunksize: one task per chunk, as ProcessPoolExecutor does it
        chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        done = self.client.gather([self.client.submit(wl.apply_chunk, fn, c, pure=False) for c in chunks])
        return [y for chunk in done for y in chunk]

    def shutdown(self):
        self.client.close(timeout=30)
        if self.cluster is not None:
            self.cluster.close(timeout=30)


def _mpi_dumps(obj, protocol):
    out = pickle.dumps(obj, protocol)
    if b"__main__" not in out:
        return out
    import cloudpickle
    return cloudpickle.dumps(obj, protocol)


def start_peer(name: str, workers: int, tmp: Path):
    """The peer's adapter and what to record about it."""
    if name == "dynexec":
        import dynexec
        archive = tmp / "dynexec-archive"
        return FuturesPeer(dynexec.Executor(max_workers=workers, archive=archive)), {
            "version": dynexec.__version__, "archive": str(archive), "module": dynexec.__file__}
    if name == "processpool":
        import multiprocessing
        return FuturesPeer(cf.ProcessPoolExecutor(workers)), {
            "version": platform.python_version(), "start_method": multiprocessing.get_start_method()}
    if name == "mpi4py":
        import mpi4py
        from mpi4py import MPI
        from mpi4py.futures import MPIPoolExecutor
        pool = MPI.COMM_WORLD.Get_size() - 1
        check(pool == workers, f"{pool} MPI worker ranks, want {workers}: run under "
                               f"mpirun -n {workers + 1} python -m mpi4py.futures")
        # Its workers do not import the script (__main__): what refers to __main__ goes by value, with
        # cloudpickle, as users of mpi4py.futures do it; the rest with pickle (cloudpickle costs more).
        MPI.pickle.__init__(_mpi_dumps, pickle.loads, pickle.HIGHEST_PROTOCOL)
        return FuturesPeer(MPIPoolExecutor()), {
            "version": mpi4py.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "pickle": "pickle, cloudpickle for what refers to __main__; pickle.loads"}
    if name == "dask":
        import dask
        import distributed
        return DaskPeer(workers), {"version": f"dask {dask.__version__}, distributed {distributed.__version__}"}
    raise ValueError(f"unknown peer {name!r}")


# -- workloads every peer runs --------------------------------------------------------------------------
def _tiny_pass(peer, fn, n: int) -> dict:
    t0 = time.perf_counter()
    futures = [peer.submit(fn, i) for i in range(n)]
    t1 = time.perf_counter()
    values = peer.gather(futures)
    dt = time.perf_counter() - t0
    check(sum(values) == n * (n + 1) // 2, "tiny: wrong results")
    return {"seconds": dt, "submit_seconds": t1 - t0, "jobs_per_s": n / dt}


def tiny_both(peer, n: int, passes: int) -> dict:
    """n tiny jobs of a __main__ function (the headline) and of an importable one, alternating, best of
    `passes` each."""
    check(inc_main.__module__ == "__main__", f"inc_main is in {inc_main.__module__}, not __main__")
    runs = {"main": [], "importable": []}
    for _ in range(passes):
        runs["main"].append(_tiny_pass(peer, inc_main, n))
        runs["importable"].append(_tiny_pass(peer, wl.inc, n))
    main, imp = (max(runs[k], key=lambda r: r["jobs_per_s"]) for k in ("main", "importable"))
    return {"jobs": n, **main, "function": "inc_main, defined in __main__ (compare.py)",
            "importable": {**imp, "function": "_workloads.inc, importable"},
            "importable_jobs_per_s": imp["jobs_per_s"], "main_over_importable": main["jobs_per_s"] / imp["jobs_per_s"],
            "runs": runs}


def run_tiny(peer, c: Ctx) -> dict:
    # dynexec's ratio __main__/importable has a target: best of two each, to damp this VM's noise
    return tiny_both(peer, c.sizes["tiny"], 2 if c.peer == "dynexec" else 1)


def run_latency(peer, c: Ctx) -> dict:
    n = c.sizes["latency"]
    ms, trips = [], []
    for i in range(n):
        t0, wall0 = time.perf_counter(), time.time()
        f = peer.submit(wl.inc, i)
        v = f.result()
        ms.append((time.perf_counter() - t0) * 1e3)
        trips.append((wall0, getattr(f, "job_id", None), time.time()))
        check(v == i + 1, "latency: wrong result")
    out = {"round_trips": n, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": statistics.fmean(ms),
           "min_ms": min(ms), "max_ms": max(ms)}
    if c.peer == "dynexec":  # where the time goes, from the times the archive keeps with each result
        stages = {"submit_to_manager": [], "manager_to_start": [], "run": [], "end_to_result": []}
        for wall0, job_id, wall1 in trips[-200:]:
            r = peer.ex.find(job_id)
            for key, dt in zip(stages, (r.submit_time - wall0, r.start_time - r.submit_time,
                                        r.end_time - r.start_time, wall1 - r.end_time)):
                stages[key].append(dt * 1e6)
        out["stages_median_us"] = {k: statistics.median(v) for k, v in stages.items()}
    return out


def run_map(peer, c: Ctx) -> dict:
    runs = {}
    for cs in (1, *c.sizes["chunksizes"]):
        n, note = c.sizes["map"], None
        if c.peer == "dask" and cs == 1:
            n = c.sizes["map_dask_cs1"]
            note = (f"scaled down from {c.sizes['map']:,} items: one dask task per item costs about a "
                    f"millisecond, so the full count would take {c.sizes['map'] / 1000:.0f} s or more")
        t0 = time.perf_counter()
        out = peer.map(wl.inc, range(n), cs)
        dt = time.perf_counter() - t0
        check(len(out) == n and sum(out) == n * (n + 1) // 2, f"map chunksize {cs}: wrong results")
        runs[str(cs)] = {"items": n, "seconds": dt, "items_per_s": n / dt, **({"note": note} if note else {})}
    best = max(runs, key=lambda k: runs[k]["items_per_s"])
    return {"runs": runs, "chunksize_1_items_per_s": runs["1"]["items_per_s"], "best_chunksize": int(best),
            "best_items_per_s": runs[best]["items_per_s"]}


def _run_spins(peer, seconds: list[float]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    cpu = peer.gather([peer.submit(wl.spin, x) for x in seconds])
    return time.perf_counter() - t0, cpu


def run_cpu(peer, c: Ctx) -> dict:
    n, s = c.sizes["cpu_jobs"], c.sizes["cpu_seconds"]
    makespan, cpu = _run_spins(peer, [s] * n)
    ideal = n * s / c.workers
    return {"jobs": n, "job_ms": s * 1e3, "makespan_s": makespan, "ideal_s": ideal, "efficiency": ideal / makespan,
            # below efficiency when the workers waited for a core (e.g. the submitting process took it)
            "job_cpu_share": sum(cpu) / (c.workers * makespan)}


def skewed_seconds(n: int) -> list[float]:
    import numpy as np
    rng = np.random.default_rng(SKEW["seed"])
    xm = SKEW["mean_s"] * (SKEW["alpha"] - 1) / SKEW["alpha"]  # Pareto(xm, alpha) has mean alpha*xm/(alpha-1)
    return np.minimum((rng.pareto(SKEW["alpha"], n) + 1) * xm, SKEW["cap_s"]).tolist()


def run_skewed(peer, c: Ctx) -> dict:
    seconds = skewed_seconds(c.sizes["skewed_jobs"])
    makespan, cpu = _run_spins(peer, seconds)
    ideal = max(sum(seconds) / c.workers, max(seconds))  # no schedule can beat either bound
    return {"jobs": len(seconds), "distribution": SKEW, "total_work_s": sum(seconds),
            "mean_job_ms": statistics.fmean(seconds) * 1e3,
            "longest_job_ms": max(seconds) * 1e3, "makespan_s": makespan, "ideal_s": ideal,
            "efficiency": ideal / makespan, "job_cpu_share": sum(cpu) / (c.workers * makespan)}


# -- dynexec only -----------------------------------------------------------------------------------------
def _wait_all(futures, timeout: float, what: str):
    done, not_done = cf.wait(futures, timeout=timeout)
    check(not not_done, f"{what}: {len(not_done)} of {len(futures)} jobs not done after {timeout:g} s")


def _warm(ex, workers: int) -> None:
    _wait_all([ex.submit(wl.inc, i) for i in range(WARMUP_PER_WORKER * workers)], 60, "warm-up")


def run_native(c: Ctx) -> dict:
    import dynexec
    n = c.sizes["native"]
    out = {"jobs": n, "servers": f"{c.workers} in-process (processes=False)", "service": "noop(x=1.0)"}
    for label, archive in (("archive_off", False), ("archive_on", c.tmp / "native-archive")):
        with dynexec.Executor(max_workers=c.workers, processes=False, archive=archive) as ex:
            _wait_all([ex.submit_service("noop", x=1.0) for _ in range(1000)], 60, "warm-up")
            t0 = time.perf_counter()
            futures = [ex.submit_service("noop", x=1.0) for _ in range(n)]
            _wait_all(futures, 300, "native")
            dt = time.perf_counter() - t0
            check(all(f.exception() is None for f in futures), "native: a job failed")
        out[f"jobs_per_s_{label}"] = n / dt
    return out


def run_dd(directory: Path, mib: int, extra: list[str]) -> dict:
    """dd's write bandwidth into `directory`: the same disk the archive writes to, in the same run."""
    path = directory / "dd.tmp"
    cmd = ["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={mib // 4}", *extra]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        elapsed = time.perf_counter() - t0
        path.unlink(missing_ok=True)
    check(p.returncode == 0, f"{' '.join(cmd)}: {p.stderr.strip()}")
    said = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    m = re.search(r", ([0-9.]+) s,", said)
    seconds = float(m.group(1)) if m else elapsed  # dd's own clock excludes starting the process
    return {"command": " ".join(cmd), "mib": mib // 4 * 4, "seconds": seconds, "mib_per_s": mib // 4 * 4 / seconds,
            "wall_seconds": elapsed, "dd_says": said}


def _run_parts(c: Ctx, parts) -> dict:
    """Runs (name, fn) parts of one workload; one that fails or is skipped does not lose the others."""
    out = {}
    for name, fn in parts:
        if fn is None:
            out[name] = {"status": "skipped", "reason": "--quick"}
            continue
        try:
            out[name] = {"status": "ok", **fn(c)}
        except Exception as exc:
            traceback.print_exc()
            out[name] = {"status": "failed", "reason": describe(exc)}
    return out


def _find_times(find, job_ids, expected) -> dict:
    ms = []
    for job_id, want in zip(job_ids, expected):
        t0 = time.perf_counter()
        r = find(job_id)
        ms.append((time.perf_counter() - t0) * 1e3)
        check(r.value == want, "find: wrong value")
    return {"lookups": len(ms), "median_ms": statistics.median(ms), "p99_ms": pct(ms, 99), "first_ms": ms[0]}


def archive_small(c: Ctx) -> dict:
    """Tiny jobs with the archive off and on; then find by ID, in the open session and after it."""
    import dynexec
    n = c.sizes["tiny"]
    out, archive = {"jobs": n}, c.tmp / "small-archive"
    for label, where in (("archive_off", False), ("archive_on", archive)):
        with dynexec.Executor(max_workers=c.workers, archive=where) as ex:
            _warm(ex, c.workers)
            t0 = time.perf_counter()
            futures = [ex.submit(wl.inc, i) for i in range(n)]
            values = [f.result() for f in futures]
            out[f"jobs_per_s_{label}"] = n / (time.perf_counter() - t0)
            check(values == [i + 1 for i in range(n)], "archive small: wrong results")
            if where:
                picks = random.Random(7).sample(range(n), min(c.sizes["find"], n))
                ids, want = [futures[i].job_id for i in picks], [i + 1 for i in picks]
                find = {"open_session": {**_find_times(ex.find, ids, want), "how": "ex.find(job_id), executor running"}}
    find["after_shutdown"] = {**_find_times(lambda i: dynexec.find(i, archive), ids, want),
                              "how": "dynexec.find(job_id, archive) after shutdown, as a later process would"}
    out["on_off_ratio"] = out["jobs_per_s_archive_on"] / out["jobs_per_s_archive_off"]
    return {**out, "find": find}


def _large_pass(c: Ctx, where) -> dict:
    """One timed pass of large results; `where` is the archive folder, or False for archive off."""
    import dynexec
    jobs, mib = c.sizes["large_jobs"], c.sizes["large_mib"]
    stats = None
    try:
        with dynexec.Executor(max_workers=c.workers, archive=where) as ex:
            try:
                ex.submit(wl.ones, 64).result()
                os.sync()  # start with no dirty pages of earlier runs: the kernel would throttle this one for them
                t0 = time.perf_counter()
                futures = [ex.submit(wl.ones, mib << 20) for _ in range(jobs)]
                for i, f in enumerate(futures):
                    v = f.result(timeout=300)
                    check(v.nbytes == mib << 20 and v[-1] == 1.0, "large: wrong result")
                    futures[i] = v = None  # keep at most the unread results in memory
                dt = time.perf_counter() - t0
            finally:
                stats = ex.stats()  # re-dispatches and lost jobs say what happened
    except Exception as exc:
        traceback.print_exc()
        return {"status": "failed", "reason": describe(exc), "engine": stats}
    out = {"status": "ok", "seconds": dt, "mib_per_s": jobs * mib / dt, "engine": stats}
    if where:
        out["bytes_on_disk"] = sum(p.stat().st_size for p in Path(where).glob("*.h5"))
    return out


def _best(runs: list[dict], key: str) -> dict:
    """The best of repeated runs, all of them kept; failed runs are said, never dropped silently."""
    ok = [r for r in runs if r["status"] == "ok"]
    failed = [r for r in runs if r["status"] != "ok"]
    if not ok:
        return {"status": "failed", "reason": failed[-1]["reason"], "runs": runs}
    best = {**max(ok, key=lambda r: r[key]), "runs": runs}
    if failed:
        best["note"] = f"{len(failed)} of {len(runs)} runs failed: {failed[-1]['reason']}"
    return best


def archive_large(c: Ctx) -> dict:
    """Large numpy results, archive off and on, best of two each: MiB of results per second, end to end."""
    jobs, mib = c.sizes["large_jobs"], c.sizes["large_mib"]
    out = {"jobs": jobs, "mib_per_job": mib, "total_mib": jobs * mib,
           "how": "end to end: W jobs make np.ones arrays, send them to the head, which archives them; MiB of "
                  "results / wall time until the last future has its value (a future completes only once its "
                  "result is written and flushed); best of 2 runs, each after os.sync()"}
    out["archive_off"] = _best([_large_pass(c, False) for _ in range(2)], "mib_per_s")
    out["archive_on"] = _best([_large_pass(c, c.tmp / f"large-archive-{k}") for k in range(2)], "mib_per_s")
    on, off = out["archive_on"], out["archive_off"]
    if on["status"] == off["status"] == "ok" and on["seconds"] > off["seconds"]:
        out["mib_per_s_archive_only_estimate"] = jobs * mib / (on["seconds"] - off["seconds"])
    return out


def archive_dd(c: Ctx) -> dict:
    """dd into the archive's filesystem: the bar for archive_large."""
    where = c.tmp / "dd"
    where.mkdir(exist_ok=True)
    # Best of two each, after os.sync(): a first write into memory this VM has not touched yet can be several
    # times slower, and the bar for the archive should be the disk at its best, not at its worst.
    out = {"fair_comparison": "page_cache (no fdatasync): the archive flushes HDF5 once per batch (H5Fflush) and "
                              "never fsyncs, so it too may return before its data is on disk; the conv=fdatasync "
                              "figure is the disk's own bandwidth, for reference"}
    for label, extra in (("page_cache", []), ("fdatasync", ["conv=fdatasync"])):
        runs = []
        for _ in range(2):
            os.sync()
            runs.append({"status": "ok", **run_dd(where, c.sizes["dd_mib"], extra)})
        out[label] = _best(runs, "mib_per_s")
    return out


def run_archive(c: Ctx) -> dict:
    out = _run_parts(c, [("small", archive_small), ("large", archive_large), ("dd", archive_dd)])
    on, dd = out["large"].get("archive_on", {}), out["dd"]
    if on.get("status") == "ok" and dd["status"] == "ok":
        out["large_vs_dd"] = {"status": "ok", "page_cache": on["mib_per_s"] / dd["page_cache"]["mib_per_s"],
                              "fdatasync": on["mib_per_s"] / dd["fdatasync"]["mib_per_s"]}
    else:
        out["large_vs_dd"] = {"status": "n/a", "reason": "large archive-on or dd figure missing"}
    return out


def run_backlog(c: Ctx) -> dict:
    import gc
    import tracemalloc
    from concurrent.futures import Future

    import dynexec
    import psutil
    n = c.sizes["backlog"]
    proc = psutil.Process()
    with dynexec.Executor(max_workers=1, processes=False, archive=c.tmp / "backlog-archive") as ex:
        _wait_all([ex.submit_service("noop", x=1.0) for _ in range(1000)], 60, "warm-up")
        ex.remove_server(ex.servers()[0]["id"])  # no server: every job submitted now waits
        gc.collect()
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        futures = [ex.submit_service("noop", x=1.0) for _ in range(n)]
        t1 = time.perf_counter()
        rss1 = proc.memory_info().rss
        engine_outstanding = ex.stats()["outstanding"]
        backlog = sum(not f.done() for f in futures)  # results the caller does not have yet
        t_join = time.perf_counter()
        for _ in range(c.workers):
            ex.add_server()
        _wait_all(futures, 600, "backlog")
        t2 = time.perf_counter()
        rss2 = proc.memory_info().rss
    out = {"method": "python: in-process Executor (processes=False, archive on) with its server removed, "
                     "submit_service('noop') n times, then W servers added; RSS growth of this process (psutil) "
                     "at the end of submission, which includes the n JobFuture objects the caller holds",
           "jobs": n, "submit_seconds": t1 - t0, "rss_growth_bytes": rss1 - rss0, "bytes_per_job": (rss1 - rss0) / n,
           "not_done_at_end_of_submission": backlog, "engine_outstanding_at_end_of_submission": engine_outstanding,
           "drain_seconds": t2 - t_join, "total_jobs_per_s": n / (t2 - t0),
           "rss_after_drain_growth_bytes": rss2 - rss0}
    if backlog >= min(1000, n // 10):
        out["drain_jobs_per_s"] = backlog / (t2 - t_join)
    else:
        out["drain_jobs_per_s"] = None
        out["note"] = f"no backlog formed: only {backlog} of {n} jobs were not done when submission ended"
    # For scale: what a bare concurrent.futures.Future costs (tracemalloc: unaffected by memory freed above).
    del futures
    gc.collect()
    tracemalloc.start()
    bare = [Future() for _ in range(10_000)]
    out["bare_future_bytes_each"] = tracemalloc.get_traced_memory()[0] / len(bare)
    tracemalloc.stop()
    del bare
    tracemalloc.start()
    queued = [dynexec.executor.JobFuture(ex, f"{ex.session}-{i:010d}") for i in range(10_000)]
    out["job_future_bytes_each"] = tracemalloc.get_traced_memory()[0] / len(queued)  # job ID included
    tracemalloc.stop()
    return out


def new_server(c: Ctx) -> dict:
    import dynexec
    n = c.sizes["new_server_jobs"]
    with dynexec.Executor(max_workers=1, archive=c.tmp / "new-server-archive") as ex:
        _warm(ex, 1)
        futures = [ex.submit(wl.spin, NEW_SERVER_JOB_S) for _ in range(n)]
        backlog = ex.stats()["outstanding"]
        t_call = time.time()  # wall clock: the archive's times are Unix seconds
        new_id = ex.add_server()
        t_add = time.time()
        _wait_all(futures, 120, "new server")
        results = [ex.find(f.job_id) for f in futures]
    on_new = [r for r in results if r.server == new_id]
    out = {"jobs": n, "job_ms": NEW_SERVER_JOB_S * 1e3, "outstanding_at_add": backlog, "new_server": new_id,
           "add_server_seconds": t_add - t_call, "jobs_on_new_server": len(on_new)}
    if on_new:
        first = min(r.start_time for r in on_new)
        out["first_job_after_add_return_ms"] = (first - t_add) * 1e3
        out["first_job_after_add_call_ms"] = (first - t_call) * 1e3
        if first < t_add:
            out["note"] = "negative: the new server started a job before add_server() returned"
    else:
        out["first_job_after_add_return_ms"] = None
        out["note"] = (f"the new server ran none of the {backlog} jobs queued when it was added (they had been "
                       f"handed to the first server already)")
    return out


def _kill(ex, victim: dict) -> float:
    import psutil
    check(psutil.Process(victim["pid"]).ppid() == os.getpid(), "the server to kill is not this process's child")
    t_kill = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    return t_kill


def _reruns(ex, futures, victim: dict, t_kill: float) -> dict:
    _wait_all(futures, 120, "kill -9")
    results = [ex.find(f.job_id) for f in futures]
    reruns = [r for r in results if r.attempts > 1]
    out = {"lease_ms": KILL_LEASE_S * 1e3, "killed_server": victim["id"],
           "jobs_failed": sum(r.status != "ok" for r in results),
           "jobs_rerun": len(reruns), "reruns_on_killed_server": sum(r.server == victim["id"] for r in reruns),
           "lease_expiry_last_seen_vs_kill_ms": (victim["lease_expiry"] - t_kill) * 1e3,
           "how": "re-runs are archived results with attempts > 1; their earliest start_time against the kill, "
                  "against kill time + lease, and against the lease expiry the registry reported just before the "
                  "kill (last renewal + lease: the moment the server could first be declared gone)"}
    if reruns:
        restart = min(r.start_time for r in reruns)
        out["first_rerun_after_kill_ms"] = (restart - t_kill) * 1e3
        out["first_rerun_after_expected_expiry_ms"] = (restart - t_kill - KILL_LEASE_S) * 1e3
        out["first_rerun_after_last_seen_expiry_ms"] = (restart - victim["lease_expiry"]) * 1e3
    else:
        out["first_rerun_after_expected_expiry_ms"] = None
    return out


def kill_busy(c: Ctx) -> dict:
    """As a user meets it: both servers have queues; kill the one with more jobs in flight."""
    import dynexec
    n = c.sizes["kill_jobs"]
    with dynexec.Executor(max_workers=2, archive=c.tmp / "kill-busy-archive", lease_seconds=KILL_LEASE_S) as ex:
        _warm(ex, 2)
        futures = [ex.submit(wl.spin, KILL_JOB_S) for _ in range(n)]
        time.sleep(0.5)
        servers = sorted(ex.servers(), key=lambda s: s["statistics"]["in_flight"])
        victim, survivor = servers[-1], servers[0]
        t_kill = _kill(ex, victim)
        out = _reruns(ex, futures, victim, t_kill)
    return {"jobs": n, "job_ms": KILL_JOB_S * 1e3, "killed_in_flight": victim["statistics"]["in_flight"],
            "survivor_in_flight_at_kill": survivor["statistics"]["in_flight"], **out,
            "note": "a re-run also waits behind the jobs already queued on the survivor"}


def kill_idle(c: Ctx) -> dict:
    """Lease expiry to re-run alone: one long job; kill its server while the other one is idle."""
    import dynexec
    job_s = 2.0
    with dynexec.Executor(max_workers=2, archive=c.tmp / "kill-idle-archive", lease_seconds=KILL_LEASE_S) as ex:
        _warm(ex, 2)
        future = ex.submit(wl.spin, job_s)
        deadline = time.monotonic() + 5
        busy = []
        while not busy and time.monotonic() < deadline:
            busy = [s for s in ex.servers() if s["statistics"]["in_flight"]]
            time.sleep(0.01)
        check(bool(busy), "the job did not start within 5 s")
        time.sleep(0.2)
        victim = next(s for s in ex.servers() if s["id"] == busy[0]["id"])  # its lease as of now
        t_kill = _kill(ex, victim)
        out = _reruns(ex, [future], victim, t_kill)
    return {"jobs": 1, "job_ms": job_s * 1e3, **out}


def run_elasticity(c: Ctx) -> dict:
    kill = c.sizes["kill_jobs"] > 0
    return _run_parts(c, [("new_server", new_server), ("kill_idle", kill_idle if kill else None),
                          ("kill_busy", kill_busy if kill else None)])


# -- clusters: each peer as its users run it across machines (here: loopback, W compute processes) ----------
def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A process group of our own (stopped with _stop), output into `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait_until(ready, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with code {proc.returncode} before it was ready: "
                               f"{log.read_text(errors='replace')[-1500:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:g} s: {log.read_text(errors='replace')[-1500:]}")
        time.sleep(0.05)


def _cluster_figures(peer, c: Ctx) -> dict:
    """What every cluster row measures, the same for each peer: tiny jobs (__main__ and importable), map with
    chunksize 1 (of the __main__ function), sequential round trips."""
    n = c.sizes["cluster_jobs"]
    peer.gather([peer.submit(inc_main, i) for i in range(WARMUP_PER_WORKER * c.workers)])
    out = tiny_both(peer, n, 1)
    t0 = time.perf_counter()
    items = peer.map(inc_main, range(n), 1)
    dt = time.perf_counter() - t0
    check(len(items) == n and sum(items) == n * (n + 1) // 2, "cluster map: wrong results")
    out["map_chunksize_1_items_per_s"] = n / dt
    ms = []
    for i in range(c.sizes["cluster_latency"]):
        t0 = time.perf_counter()
        check(peer.submit(inc_main, i).result() == i + 1, "cluster latency: wrong result")
        ms.append((time.perf_counter() - t0) * 1e3)
    out.update(latency_p50_ms=pct(ms, 50), latency_p99_ms=pct(ms, 99), round_trips=len(ms))
    return out


def cluster_dynexec(c: Ctx) -> dict:
    """mpirun -n W+1 python -m dynexec.cluster (a head and W servers), and a client: Executor(connect=FILE)."""
    import dynexec
    mpirun = shutil.which("mpirun")
    check(mpirun is not None, "mpirun not found on PATH")
    conn, log = c.tmp / "cluster.json", c.tmp / "dynexec-cluster.log"
    cmd = [mpirun, "--oversubscribe", "-n", str(c.workers + 1), "-x", "PYTHONPATH", sys.executable, "-m",
           "dynexec.cluster", "--archive", str(c.tmp / "cluster-archive"), "--connection-file", str(conn)]
    proc = _start(cmd, log, dict(os.environ, **MPI_ENV))
    try:
        _wait_until(lambda: "dynexec cluster ready" in log.read_text(errors="replace"), proc, log, 120,
                    "the dynexec cluster")
        with dynexec.Executor(connect=conn) as ex:
            servers = len(ex.servers())
            check(servers == c.workers, f"the cluster has {servers} compute servers, want {c.workers}")
            out = _cluster_figures(FuturesPeer(ex), c)
            ex.shutdown_cluster()
        proc.wait(60)
    finally:
        _stop(proc)  # what is left of its process group, if anything
    return {**out, "how": " ".join(cmd[:4] + ["python -m dynexec.cluster ..."]) + "; Executor(connect=FILE), "
                          "every result archived"}


def cluster_mpi4py(c: Ctx) -> dict:
    """MPIPoolExecutor under mpirun -n W+1 python -m mpi4py.futures: this child is rank 0."""
    peer, info = start_peer("mpi4py", c.workers, c.tmp)
    try:
        return {**_cluster_figures(peer, c), **info,
                "how": f"mpirun -n {c.workers + 1} python -m mpi4py.futures; MPIPoolExecutor()"}
    finally:
        peer.shutdown()


def cluster_dask(c: Ctx) -> dict:
    """A dask scheduler and W single-threaded TCP workers, each started as its own process (loopback), and a
    Client of the scheduler file: as a dask cluster is run across machines."""
    from distributed import Client
    file = c.tmp / "dask-scheduler.json"
    env = dict(os.environ)
    scheduler = _start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", str(file)], c.tmp / "dask-scheduler.log", env)
    workers = None
    try:
        _wait_until(file.exists, scheduler, c.tmp / "dask-scheduler.log", 60, "the dask scheduler")
        workers = _start([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(file),
                          "--nworkers", str(c.workers), "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                         c.tmp / "dask-workers.log", env)
        peer = DaskPeer(c.workers, Client(scheduler_file=str(file), timeout=60))
        try:
            out = _cluster_figures(peer, c)
        finally:
            peer.shutdown()
    finally:
        for proc in (workers, scheduler):
            if proc is not None:
                _stop(proc)
    return {**out, "how": f"python -m distributed.cli.dask_scheduler, dask_worker --nworkers {c.workers} "
                          f"--nthreads 1 (tcp, loopback); Client(scheduler_file=...)"}


CLUSTER_RUNS = {"dynexec": cluster_dynexec, "mpi4py": cluster_mpi4py, "dask": cluster_dask}
COMMON_RUNS = {"tiny": run_tiny, "latency": run_latency, "map": run_map, "cpu": run_cpu, "skewed": run_skewed}
DYNEXEC_RUNS = {"native": run_native, "archive": run_archive, "backlog": run_backlog, "elasticity": run_elasticity}


def child_main(a) -> int:
    """One peer (or one dynexec-only workload) in this process; figures to --json-out after each workload."""
    # Stopped for its time limit: unwind, so executors shut down and remove what they made (SIGKILL follows).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sizes = SIZES["quick" if a.quick else "full"]
    own_tmp = not a.tmp  # run by hand: a scratch folder of its own, removed at the end
    tmp = Path(tempfile.mkdtemp(prefix="compare-child-")) if own_tmp else Path(a.tmp)
    c = Ctx(a.child, a.workers, sizes, tmp)
    doc = {"peer": a.child, "workloads": {}}
    out = Path(a.json_out)
    workloads = a.workloads.split(",")
    peer = None
    if any(w in COMMON for w in workloads):
        t0 = time.perf_counter()
        try:
            peer, info = start_peer(a.child, a.workers, tmp)
            doc.update(info)
            warm = [peer.submit(wl.inc, i) for i in range(WARMUP_PER_WORKER * a.workers)]  # start every worker
            peer.gather(warm)
        except Exception as exc:
            traceback.print_exc()
            doc["error"] = f"could not start: {describe(exc)}"
            write_json(out, doc)
            return 2
        doc["startup_s"] = time.perf_counter() - t0
    write_json(out, doc)
    try:
        for w in workloads:
            t0 = time.perf_counter()
            try:
                r = {"status": "ok", **(COMMON_RUNS[w](peer, c) if w in COMMON else
                                        CLUSTER_RUNS[a.child](c) if w in CLUSTER else DYNEXEC_RUNS[w](c))}
            except Exception as exc:
                traceback.print_exc()
                r = {"status": "failed", "reason": describe(exc)}
            r["wall_s"] = time.perf_counter() - t0
            r["loadavg_after"] = os.getloadavg()
            doc["workloads"][w] = r
            write_json(out, doc)
    finally:
        if peer is not None:
            peer.shutdown()
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


# -- the orchestrator -------------------------------------------------------------------------------------
def _version(dist: str, module: str | None = None):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        try:
            return getattr(__import__(module or dist), "__version__", None)
        except Exception as exc:
            return f"not importable ({describe(exc)})"


def machine_info() -> dict:
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else None
        except Exception as exc:
            return f"unavailable ({describe(exc)})"
    mpirun = shutil.which("mpirun")
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "python": sys.version.replace("\n", " "), "executable": sys.executable,
        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "versions": {d: _version(d) for d in ("dynexec", "mpi4py", "dask", "distributed", "numpy", "h5py",
                                              "cloudpickle", "matplotlib", "psutil")},
        "mpirun": first_line([mpirun, "--version"]) if mpirun else None,
        "git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "loadavg_at_start": os.getloadavg(),
    }


def run_cpp_bench(tmp: Path, timeout: float, sizes: dict, workers: int) -> dict:
    if not (CPP_BENCH.is_file() and os.access(CPP_BENCH, os.X_OK)):
        return {"status": "not built", "path": str(CPP_BENCH)}
    work = tmp / "cpp-bench"
    work.mkdir()
    try:
        cmd = [str(CPP_BENCH), "--json", "--workers", str(workers), "--jobs", str(sizes["cpp_jobs"]),
               "--backlog", str(sizes["cpp_backlog"]), "--new-server-jobs", str(sizes["cpp_new_server_jobs"])]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work,
                           env=dict(os.environ, DYNEXEC_ARCHIVE=str(work / "archive")))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "path": str(CPP_BENCH), "reason": f"timed out after {timeout:g} s"}
    if p.returncode != 0:
        return {"status": "failed", "path": str(CPP_BENCH), "reason": f"exit code {p.returncode}",
                "stderr_tail": p.stderr[-2000:]}
    try:
        output = json.loads(p.stdout)
    except json.JSONDecodeError:
        try:  # tolerate progress lines before the JSON object
            output = json.loads(p.stdout[p.stdout.index("{"):])
        except (ValueError, json.JSONDecodeError) as exc:
            return {"status": "failed", "path": str(CPP_BENCH), "reason": f"no JSON on stdout ({exc})",
                    "stdout_tail": p.stdout[-2000:]}
    if not isinstance(output, dict):
        return {"status": "failed", "path": str(CPP_BENCH), "reason": "stdout is JSON but not an object"}
    return {"status": "ok", "path": str(CPP_BENCH), "output": output}


def _stop(proc: subprocess.Popen) -> None:
    """Ends a child we started and everything it started (it leads its own session, so its group is ours)."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass


def run_child(peer: str, workloads: list[str], a, tmp: Path, timeout: float) -> dict:
    tag = f"{peer}-{'-'.join(workloads)}"
    ctmp = tmp / tag
    ctmp.mkdir()
    json_out, log = tmp / f"{tag}.json", tmp / f"{tag}.log"
    args = [str(Path(__file__).resolve()), "--child", peer, "--workloads", ",".join(workloads),
            "--json-out", str(json_out), "--tmp", str(ctmp), "--workers", str(a.workers)]
    args += ["--quick"] if a.quick else []
    # Every worker of every peer imports `_workloads` by name.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])))
    if peer == "mpi4py":
        mpirun = shutil.which("mpirun")
        if not mpirun:
            return {"why": "mpirun not found on PATH", "doc": {}, "log": "", "wall_s": 0.0}
        env.update(MPI_ENV)
        cmd = [mpirun, "-n", str(a.workers + 1), "--oversubscribe", "-x", "PYTHONPATH",
               sys.executable, "-m", "mpi4py.futures", *args]
    else:
        cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    why = None
    with open(log, "wb") as logf:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT, start_new_session=True)
        except OSError as exc:
            return {"why": f"cannot start the child: {describe(exc)}", "doc": {}, "log": "", "wall_s": 0.0}
        try:
            rc = proc.wait(timeout)
            why = f"child exited with code {rc}" if rc else None
        except subprocess.TimeoutExpired:
            _stop(proc)
            why = f"child timed out after {timeout:g} s (killed)"
    doc = {}
    if json_out.exists():
        try:
            doc = json.loads(json_out.read_text())
        except json.JSONDecodeError as exc:
            why = (why + "; " if why else "") + f"unreadable results ({exc})"
    text = log.read_text(errors="replace")
    return {"why": why, "doc": doc, "log": "\n".join(text.strip().splitlines()[-15:]),
            "wall_s": time.perf_counter() - t0}


def merge_child(results: dict, peer: str, workloads: list[str], child: dict) -> dict:
    """Puts a child's figures into results; returns what went wrong with the child, if anything."""
    doc, why = child["doc"], child["why"]
    problem = doc.get("error") or why
    for w in workloads:
        r = doc.get("workloads", {}).get(w)
        if r is None:
            r = {"status": "failed", "reason": problem or "no result"}
        if r.get("status") != "ok" and child["log"]:
            r["log_tail"] = child["log"]
        results[w][peer] = r
    info = {k: v for k, v in doc.items() if k not in ("workloads", "error", "peer", "startup_s")}
    return {"problem": problem, "startup_s": doc.get("startup_s"), "info": info, "wall_s": child["wall_s"],
            **({"log_tail": child["log"]} if problem else {})}


def orchestrate(a) -> int:
    sizes = SIZES["quick" if a.quick else "full"]
    peers = a.peers.split(",") if a.peers else list(QUICK_PEERS if a.quick else PEERS)
    workloads = a.only.split(",") if a.only else list(WORKLOADS)
    for name, have, known in (("peer", peers, PEERS), ("workload", workloads, WORKLOADS)):
        bad = [x for x in have if x not in known]
        if bad:
            sys.exit(f"unknown {name}(s) {', '.join(bad)}; choose from {', '.join(known)}")
    timeout = a.timeout or sizes["timeout"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "args": {**vars(a), "peers": peers, "only": workloads, "timeout": timeout}, "machine": machine_info(),
           "sizes": sizes, "peers": {}, "workloads": {w: {} for w in workloads}}
    # Scratch (archives, dd's file) on the same filesystem as --out, removed at the end.
    tmp = Path(tempfile.mkdtemp(prefix="compare-tmp-", dir=out))
    try:
        if "dynexec" in peers and set(workloads) & {"native", "backlog", "elasticity"}:
            log(f"C++ bench: {CPP_BENCH.relative_to(ROOT)}")
            doc["cpp_bench"] = run_cpp_bench(tmp, timeout, sizes, a.workers)
        cpp = doc.get("cpp_bench", {}).get("output", {})
        for peer in peers:
            entry = doc["peers"][peer] = {"status": "ok"}
            common = [w for w in workloads if w in COMMON]
            if common:
                log(f"{peer}: {', '.join(common)}")
                got = merge_child(doc["workloads"], peer, common, run_child(peer, common, a, tmp, timeout))
                entry.update(got["info"], startup_s=got["startup_s"], wall_s=got["wall_s"])
                if got["problem"]:
                    ran = any(doc["workloads"][w][peer].get("status") == "ok" for w in common)
                    entry.update(status="partial" if ran else "failed", reason=got["problem"],
                                 log_tail=got.get("log_tail"))
            for w in (w for w in workloads if w in DYNEXEC_ONLY):
                if peer != "dynexec":
                    doc["workloads"][w][peer] = {"status": "n/a", "reason": "dynexec only"}
                elif w == "backlog" and isinstance(cpp.get("backlog"), dict):
                    # The engine's own figures from C++; what a Python caller holds besides, from Python.
                    log(f"{peer}: {w} (python)")
                    got = merge_child(doc["workloads"], peer, [w], run_child(peer, [w], a, tmp, timeout))
                    python = doc["workloads"][w][peer]
                    doc["workloads"][w][peer] = {"status": "ok", "method": "C++ bench", **cpp["backlog"],
                                                 "python": python}
                    if got["problem"]:
                        entry.setdefault("problems", {})[w] = got["problem"]
                else:
                    log(f"{peer}: {w}")
                    got = merge_child(doc["workloads"], peer, [w], run_child(peer, [w], a, tmp, timeout))
                    if got["problem"]:
                        entry.setdefault("problems", {})[w] = got["problem"]
            for w in (w for w in workloads if w in CLUSTER):
                if peer not in CLUSTER_PEERS:
                    doc["workloads"][w][peer] = {"status": "n/a", "reason": "not a cluster (one machine's pool)"}
                    continue
                log(f"{peer}: {w}")
                got = merge_child(doc["workloads"], peer, [w], run_child(peer, [w], a, tmp, timeout))
                if got["problem"]:
                    entry.setdefault("problems", {})[w] = got["problem"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["machine"]["loadavg_at_end"] = os.getloadavg()
    doc["wall_s"] = time.perf_counter() - started
    rows = build_rows(doc, peers, workloads)
    table = format_table(doc, rows, peers)
    print(table)
    doc["targets"], doc["table"] = rows, table
    write_json(out / "compare.json", doc)
    try:
        draw(doc, rows, peers, workloads, out / "compare.png")
    except Exception as exc:  # the figures are in the JSON already; say why there is no chart
        print(f"no chart: {describe(exc)}", file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'compare.json'} and {out / 'compare.png'} ({doc['wall_s']:.0f} s)")
    return 0


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# -- the table and the chart --------------------------------------------------------------------------------
def build_rows(doc: dict, peers: list[str], workloads: list[str]) -> list[dict]:
    res = doc["workloads"]

    def val(w, peer, *path):
        e = res.get(w, {}).get(peer)
        if not e or e.get("status") != "ok":
            return None
        for k in path:
            e = e.get(k) if isinstance(e, dict) else None
            if isinstance(e, dict) and e.get("status") not in (None, "ok"):
                return None
        return e

    def cell(w, peer):
        e = res.get(w, {}).get(peer)
        return "—" if not e else {"ok": "—", "n/a": "n/a"}.get(e.get("status"), e.get("status"))

    rows = []

    def row(w, metric, values, *, target="", result="", ratio=False, chart=None, unit=""):
        values = {p: v for p, v in values.items() if p in peers}
        rows.append({"workload": w, "metric": metric, "values": values,
                     "cells": {p: cell(w, p) for p in peers if values.get(p) is None},
                     "ratio": ratio, "target": target, "result": result, "chart": chart, "unit": unit})

    def judge(ok):
        return "n/a" if ok is None else ("pass" if ok else "miss")

    def vs(values, checks):
        """checks: (peer, predicate(dynexec, peer)); a verdict per peer that ran."""
        parts = []
        for p, pred in checks:
            if p not in peers:
                continue
            dx, other = values.get("dynexec"), values.get(p)
            parts.append(f"{SHORT[p]}:{judge(None if dx is None or other is None else pred(dx, other))}")
        return " ".join(parts) or "n/a (peer not run)"

    def per_peer(w, *path):
        return {p: val(w, p, *path) for p in peers}

    if "tiny" in workloads:
        v = per_peer("tiny", "jobs_per_s")
        row("tiny", "jobs/s, __main__ function", v, ratio=True, chart="__main__", unit="jobs/s",
            target="≥3x pp, ≥5x mpi, ≥50x dask",
            result=vs(v, [("processpool", lambda d, o: d >= 3 * o), ("mpi4py", lambda d, o: d >= 5 * o),
                          ("dask", lambda d, o: d >= 50 * o)]))
        row("tiny", "jobs/s, importable function", per_peer("tiny", "importable_jobs_per_s"), ratio=True,
            chart="importable", unit="jobs/s")
        r = val("tiny", "dynexec", "main_over_importable")
        row("tiny", "dynexec: __main__ / importable", {"dynexec": r}, target="≥0.8",
            result=judge(None if r is None else r >= 0.8))
    if "latency" in workloads:
        v = per_peer("latency", "p50_ms")
        row("latency", "p50 ms", v, ratio=True, chart="p50", unit="ms", target="≤ pp (stretch ≤0.5x pp)",
            result=vs(v, [("processpool", lambda d, o: d <= o)]) + ", stretch "
            + vs(v, [("processpool", lambda d, o: d <= 0.5 * o)]))
        row("latency", "p99 ms", per_peer("latency", "p99_ms"), ratio=True, chart="p99", unit="ms")
        for key in ("submit_to_manager", "manager_to_start", "run", "end_to_result"):
            row("latency", f"dynexec stage, median µs: {key.replace('_', ' ')}",
                {"dynexec": val("latency", "dynexec", "stages_median_us", key)})
    if "map" in workloads:
        row("map", "items/s, chunksize 1", per_peer("map", "chunksize_1_items_per_s"), ratio=True,
            chart="chunksize 1", unit="items/s")
        v = per_peer("map", "best_items_per_s")
        row("map", "items/s, best chunksize", v, ratio=True, chart="best chunksize", unit="items/s",
            target="≥ pp best", result=vs(v, [("processpool", lambda d, o: d >= o)]))
        row("map", "best chunksize", per_peer("map", "best_chunksize"))
    for w in ("cpu", "skewed"):
        if w in workloads:
            v = per_peer(w, "efficiency")
            own = judge(None if v.get("dynexec") is None else v["dynexec"] >= 0.97)
            row(w, "efficiency", v, ratio=True, chart="efficiency", unit="efficiency", target="≥0.97 and ≥ pp",
                result=f"≥0.97:{own} " + vs(v, [("processpool", lambda d, o: d >= o)]))
            row(w, "job CPU share", per_peer(w, "job_cpu_share"), ratio=True)

    if "cluster" in workloads:
        v = per_peer("cluster", "jobs_per_s")
        local, dx = val("tiny", "dynexec", "jobs_per_s"), v.get("dynexec")
        client = None if local is None or dx is None else dx / local
        row("cluster", "tiny jobs/s, __main__ function", v, ratio=True, chart="tiny", unit="jobs/s",
            target="dx ≥0.8x local dx tiny, ≥3x mpi, ≥30x dask",
            result=f"local:{judge(None if client is None else client >= 0.8)} "
                   + vs(v, [("mpi4py", lambda d, o: d >= 3 * o), ("dask", lambda d, o: d >= 30 * o)]))
        row("cluster", "tiny jobs/s, importable function", per_peer("cluster", "importable_jobs_per_s"), ratio=True)
        row("cluster", "map items/s, chunksize 1", per_peer("cluster", "map_chunksize_1_items_per_s"), ratio=True,
            chart="map chunksize 1")
        row("cluster", "round trip p50 ms", per_peer("cluster", "latency_p50_ms"), ratio=True)
        row("cluster", "dynexec client / local Executor, tiny jobs/s", {"dynexec": client}, target="≥0.8",
            result=judge(None if client is None else client >= 0.8))
        if local is None:
            rows[-1]["cells"]["dynexec"], rows[-1]["result"] = "—", "n/a (no local tiny figure: add tiny to --only)"

    def status_at(w, *path):
        """'failed', 'skipped'... for the first part on the path that did not run, else None."""
        e = res.get(w, {}).get("dynexec")
        for k in (None, *path):
            e = e if k is None else (e.get(k) if isinstance(e, dict) else None)
            if isinstance(e, dict) and e.get("status") not in (None, "ok"):
                return e["status"]
        return None

    def dxrow(w, metric, path, target="", pred=None, **kw):
        """A dynexec-only row: its figure at `path` in the workload's results, judged by pred if given."""
        v = val(w, "dynexec", *path)
        result = judge(None if v is None else pred(v)) if pred else ""
        row(w, metric, {"dynexec": v}, target=target, result=result, **kw)
        if v is None:
            rows[-1]["cells"]["dynexec"] = status_at(w, *path) or "—"

    cpp_doc = doc.get("cpp_bench", {})
    cpp = cpp_doc.get("output", {})
    if "native" in workloads:
        dxrow("native", "noop jobs/s, archive off (python, in-process)", ["jobs_per_s_archive_off"],
              chart="python, archive off", unit="jobs/s")
        dxrow("native", "noop jobs/s, archive on (python, in-process)", ["jobs_per_s_archive_on"],
              chart="python, archive on", unit="jobs/s")
        for key, label, bound in (("jobs_per_s_archive_off", "archive off", 1_000_000),
                                  ("jobs_per_s_archive_on", "archive on", 200_000)):
            section = cpp.get("native_cpp") if isinstance(cpp.get("native_cpp"), dict) else {}
            v = section.get(key) if isinstance(section.get(key), (int, float)) else None
            row("native", f"noop jobs/s, {label} (C++)", {"dynexec": v}, target=f"≥{bound:,}",
                result=judge(None if v is None else v >= bound), chart=f"C++, {label}", unit="jobs/s")
            if v is None:  # say why there is no figure
                status = cpp_doc.get("status", "not run")
                rows[-1]["cells"]["dynexec"] = status
                rows[-1]["result"] = f"n/a (C++ bench {status})" if status != "ok" else f"n/a (no native_cpp.{key})"
    if "archive" in workloads:
        dxrow("archive", "tiny jobs/s, archive off", ["small", "jobs_per_s_archive_off"])
        dxrow("archive", "tiny jobs/s, archive on", ["small", "jobs_per_s_archive_on"])
        dxrow("archive", "large results MiB/s, archive on (end to end)", ["large", "archive_on", "mib_per_s"],
              chart="archive on", unit="MiB/s")
        dxrow("archive", "large results MiB/s, archive off", ["large", "archive_off", "mib_per_s"],
              chart="archive off", unit="MiB/s")
        dxrow("archive", "large results MiB/s, archive alone (MiB / (time on - time off))",
              ["large", "mib_per_s_archive_only_estimate"])
        dxrow("archive", "dd MiB/s, page cache (no fdatasync)", ["dd", "page_cache", "mib_per_s"],
              chart="dd page cache", unit="MiB/s")
        dxrow("archive", "dd MiB/s, conv=fdatasync", ["dd", "fdatasync", "mib_per_s"], chart="dd fdatasync",
              unit="MiB/s")
        dxrow("archive", "large archive on / dd page cache", ["large_vs_dd", "page_cache"], "≥0.8",
              lambda x: x >= 0.8)
        dxrow("archive", "find by ID median ms (ex.find)", ["small", "find", "open_session", "median_ms"],
              "<1 ms", lambda x: x < 1)
        dxrow("archive", "find by ID median ms (dynexec.find, closed)",
              ["small", "find", "after_shutdown", "median_ms"], "<1 ms", lambda x: x < 1)
    if "backlog" in workloads:
        method = "C++" if (res.get("backlog", {}).get("dynexec") or {}).get("method") == "C++ bench" else "python"
        measure = "heap bytes/job (C++, mallinfo2)" if method == "C++" else "RSS bytes/job (python)"
        dxrow("backlog", measure, ["bytes_per_job"], "≤1,024", lambda x: x <= 1024,
              chart="bytes/job", unit="bytes/job")
        tiny = val("tiny", "dynexec", "jobs_per_s")
        dxrow("backlog", f"drain jobs/s ({method})", ["drain_jobs_per_s"], "≥ dynexec tiny jobs/s",
              (lambda x: x >= tiny) if tiny is not None else None)
        if val("backlog", "dynexec", "note"):
            rows[-1]["result"] = "n/a (no backlog formed)"
        elif tiny is None:
            rows[-1]["result"] = "n/a (no dynexec tiny figure)"
        python = [] if method == "python" else ["python"]  # the Python figures, beside the C++ ones
        if python:
            dxrow("backlog", "RSS bytes/job (python: engine and the JobFuture the caller holds)",
                  python + ["bytes_per_job"])
            dxrow("backlog", "drain jobs/s (python)", python + ["drain_jobs_per_s"])
        dxrow("backlog", "jobs not done at end of submission (python)", python + ["not_done_at_end_of_submission"])
        dxrow("backlog", "bytes of a bare concurrent.futures.Future", python + ["bare_future_bytes_each"])
        dxrow("backlog", "bytes of a queued dynexec JobFuture", python + ["job_future_bytes_each"])
    if "elasticity" in workloads:
        dxrow("elasticity", "new server: first job, ms after add_server()",
              ["new_server", "first_job_after_add_return_ms"], "≤10 ms", lambda x: x <= 10,
              chart="new server first job", unit="ms")
        if val("elasticity", "dynexec", "new_server", "jobs_on_new_server") == 0:
            rows[-1]["cells"]["dynexec"], rows[-1]["result"] = "no job ran", "miss (it ran none of the backlog)"
        dxrow("elasticity", "new server: jobs it ran of the backlog", ["new_server", "jobs_on_new_server"])
        if isinstance(cpp.get("elasticity_new_server"), dict):
            v = cpp["elasticity_new_server"].get("first_job_ms")
            row("elasticity", "new server: first job ms (C++)", {"dynexec": v}, target="≤10 ms",
                result=judge(v <= 10) if isinstance(v, (int, float)) else "n/a (no elasticity_new_server.first_job_ms)")
        for part, who in (("kill_idle", "idle survivor"), ("kill_busy", "busy survivor")):
            dxrow("elasticity", f"kill -9, {who}: first re-run, ms after lease expiry",
                  [part, "first_rerun_after_last_seen_expiry_ms"], *(("≤100 ms", lambda x: x <= 100)
                                                                     if part == "kill_idle" else ()),
                  chart=f"after expiry ({who})", unit="ms")
            dxrow("elasticity", f"kill -9, {who}: first re-run, ms after kill + lease ({KILL_LEASE_S * 1e3:.0f} ms)",
                  [part, "first_rerun_after_expected_expiry_ms"])
            dxrow("elasticity", f"kill -9, {who}: first re-run, ms after kill", [part, "first_rerun_after_kill_ms"])
    return rows


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def _walk(e, path: list[str], what: str):
    """Lines for the parts, at any depth, that did not run ("problems"; n/a is expected), or their "notes"."""
    if not isinstance(e, dict):
        return
    if what == "problems" and e.get("status") not in (None, "ok", "n/a"):
        yield f"  {'/'.join(path)}: {e['status']}: {e.get('reason', '')}"
        return
    if what == "notes" and isinstance(e.get("note"), str) and e.get("status", "ok") == "ok":
        yield f"  {'/'.join(path)}: {e['note']}"
    for k, v in e.items():
        yield from _walk(v, path + [k], what)


def format_table(doc: dict, rows: list[dict], peers: list[str]) -> str:
    others = [p for p in peers if p != "dynexec"]
    head = ["workload", "metric", *peers, *[f"dx/{SHORT[p]}" for p in others], "target", "result"]
    body = []
    for r in rows:
        cells = [r["workload"], r["metric"]]
        cells += [fmt(r["values"][p]) if r["values"].get(p) is not None else r["cells"].get(p, "—")
                  for p in peers]
        for p in others:
            d, o = r["values"].get("dynexec"), r["values"].get(p)
            cells.append(f"{d / o:.2f}x" if r["ratio"] and d is not None and o else "")
        body.append(cells + [r["target"], r["result"]])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    numeric = set(range(2, 2 + len(peers) + len(others)))
    line = lambda cells: "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    m = doc["machine"]
    kind = "quick" if doc["args"]["quick"] else "full"
    out = [f"dynexec vs peers: {doc['args']['workers']} worker processes each, {kind} run, {m['cpu_count']} CPUs, "
           f"load average {m['loadavg_at_start'][0]:.2f} at start and {m['loadavg_at_end'][0]:.2f} at end, "
           f"{doc['date']}"]
    if doc["args"]["quick"]:
        out.append("  (--quick: counts too small for the figures to mean much; it shows that everything runs)")
    for p in peers:
        e = doc["peers"].get(p, {})
        start = f", start {e['startup_s']:.2f} s" if e.get("startup_s") is not None else ""
        out.append(f"  {p:12} {e.get('status', '?')}{start}" + (f": {e['reason']}" if e.get("reason") else "")
                   + (f" ({'; '.join(f'{k}: {v}' for k, v in e['problems'].items())})" if e.get("problems") else ""))
    cpp = doc.get("cpp_bench")
    if cpp:
        out.append(f"  C++ bench    {cpp['status']}" + (f": {cpp['reason']}" if cpp.get("reason") else "")
                   + f" ({Path(cpp['path']).relative_to(ROOT)})")
    out += ["", line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    problems = [n for w, by in doc["workloads"].items() for p, e in by.items() for n in _walk(e, [w, p], "problems")]
    if problems:
        out += ["", "not measured:"] + problems
    notes = [n for w, by in doc["workloads"].items() for p, e in by.items() for n in _walk(e, [w, p], "notes")]
    if notes:
        out += ["", "notes:"] + notes
    return "\n".join(out)


def draw(doc: dict, rows: list[dict], peers: list[str], workloads: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [w for w in workloads if any(r["chart"] and r["workload"] == w for r in rows)]
    cols = min(3, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False, constrained_layout=True)
    colors = dict(zip(PEERS, ("tab:red", "tab:blue", "tab:green", "tab:orange")))
    for ax, w in zip(axes.flat, panels):
        series = [r for r in rows if r["chart"] and r["workload"] == w]
        if w in COMMON or w in CLUSTER:  # peers side by side, one bar per metric
            width = 0.8 / len(series)
            for i, r in enumerate(series):
                for j, p in enumerate(peers):
                    v = r["values"].get(p)
                    x = j + (i - (len(series) - 1) / 2) * width
                    if v is None:  # y in axes units: 0 has no place on a log scale
                        ax.text(x, 0.02, r["cells"].get(p, "—"), rotation=90, ha="center", va="bottom", fontsize=7,
                                transform=ax.get_xaxis_transform())
                    else:
                        ax.bar(x, v, width * 0.9, color=colors[p], alpha=1.0 - 0.45 * i,
                               label=r["chart"] if j == 0 and len(series) > 1 else None)
            ax.set_xticks(range(len(peers)), peers, fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            if w in ("cpu", "skewed"):
                ax.axhline(0.97, color="gray", ls="--", lw=0.8)  # the target
        else:  # dynexec only: one bar per metric
            for j, r in enumerate(series):
                v = r["values"].get("dynexec")
                if v is None:
                    ax.text(j, 0.02, r["cells"].get("dynexec", "—"), rotation=90, ha="center", va="bottom",
                            fontsize=7, transform=ax.get_xaxis_transform())
                else:
                    ax.bar(j, v, 0.6, color=colors["dynexec"])
            ax.set_xticks(range(len(series)), [r["chart"] for r in series], fontsize=7, rotation=20, ha="right")
            ax.set_xlim(-0.6, len(series) - 0.4)
            if w == "backlog":
                ax.axhline(1024, color="gray", ls="--", lw=0.8)  # the target
        values = [v for r in series for v in r["values"].values() if v is not None and v > 0]
        if values and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.set_title(f"{w} ({series[0]['unit']})", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"dynexec vs peers, {doc['args']['workers']} workers, {doc['machine']['cpu_count']} CPUs, "
                 f"{'quick' if doc['args']['quick'] else 'full'} run, {doc['date']}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="worker processes of every peer (default 2)")
    p.add_argument("--quick", action="store_true", help="small counts, dynexec and processpool only (CI)")
    p.add_argument("--only", help=f"comma-separated workloads (default all: {','.join(WORKLOADS)})")
    p.add_argument("--peers",
                   help=f"comma-separated peers (default {','.join(PEERS)}; --quick: {','.join(QUICK_PEERS)})")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for compare.json and compare.png")
    p.add_argument("--timeout", type=float, help="seconds each child process may run (default 600; --quick: 120)")
    child = p.add_argument_group("internal: one child process")
    child.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    child.add_argument("--workloads", help=argparse.SUPPRESS)
    child.add_argument("--json-out", help=argparse.SUPPRESS)
    child.add_argument("--tmp", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.workers < 1:
        p.error("--workers must be at least 1")
    if a.child:
        if not (a.workloads and a.json_out):
            p.error("--child needs --workloads and --json-out")
        return child_main(a)
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
