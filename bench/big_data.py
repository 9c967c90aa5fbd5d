"""Large arguments and results on an mpirun cluster on loopback (CURVE-encrypted TCP, as across nodes).

    .venv/bin/python bench/big_data.py                 # 1 GiB argument, 1 GiB result, 1 GiB round trip
    .venv/bin/python bench/big_data.py --mib 256 --only arg,result

Starts `mpirun -n 3 python -m dynexec.cluster` (a head and two compute servers), connects a client with
dynexec.Executor(connect=...), and times each job from submit to result: MB/s = bytes moved / seconds
(a round trip moves its size twice). It also records whether any server lost its lease (server ids
before and after) and the peak resident memory of all processes together (sampled every 50 ms).
Every process it starts is killed by PID at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

import dynexec

HERE = Path(__file__).parent
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo",
}


# Jobs: servers import this module by reference (PYTHONPATH names bench/).
def checksum(x):
    return float(x[:: 1 << 16].sum()), x.nbytes


def make(n):
    return np.ones(n)


def echo(x):
    return x


class Peak(threading.Thread):
    """Peak of the summed RSS of `root` and its descendants plus this process."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.stop = root, 0, threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.wait(0.05):
            try:
                procs = [me, psutil.Process(self.root)] + psutil.Process(self.root).children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return


def start_cluster(tmp: Path, n: int, lease: float):
    conn, log = tmp / "cluster.json", tmp / "cluster.log"
    env = dict(os.environ, **MPI_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [shutil.which("mpirun"), "--oversubscribe", "-n", str(n), sys.executable, "-m", "dynexec.cluster",
           "--archive", str(tmp / "archive"), "--connection-file", str(conn), "--lease-seconds", str(lease)]
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while "dynexec cluster ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the cluster did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc, conn, log


def stop_cluster(proc):
    pids = set()
    try:
        pids = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.Error:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `timeout` still lets the cluster be killed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=1024, help="size of the argument / result (default 1024)")
    p.add_argument("--only", default="arg,result,roundtrip")
    p.add_argument("--lease-seconds", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=120.0, help="per job")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args()
    import big_data  # noqa: F401  (this module by its importable name: servers find it on PYTHONPATH)
    n = a.mib * (1 << 20) // 8
    figures = {"mib": a.mib, "lease_seconds": a.lease_seconds}
    with tempfile.TemporaryDirectory(prefix="dynexec-big-") as d:
        proc, conn, log = start_cluster(Path(d), 3, a.lease_seconds)
        peak = Peak(proc.pid)
        peak.start()
        try:
            ex = dynexec.Executor(connect=conn)
            try:
                before = {s["id"] for s in ex.servers()}
                for what in a.only.split(","):
                    t0 = time.perf_counter()
                    try:
                        if what == "arg":
                            x = np.ones(n)
                            f = ex.submit(big_data.checksum, x)
                            del x
                            total, nbytes = f.result(timeout=a.timeout)
                            ok = nbytes == n * 8
                            moved = n * 8
                        elif what == "result":
                            f = ex.submit(big_data.make, n)
                            v = f.result(timeout=a.timeout)
                            ok = v.shape == (n,) and float(v[:: 1 << 16].sum()) == len(range(0, n, 1 << 16))
                            del v
                            moved = n * 8
                        elif what == "roundtrip":
                            x = np.ones(n)
                            f = ex.submit(big_data.echo, x)
                            del x
                            v = f.result(timeout=a.timeout)
                            ok = v.shape == (n,)
                            del v
                            moved = 2 * n * 8
                        else:
                            raise SystemExit(f"unknown workload {what!r}")
                        dt = time.perf_counter() - t0
                        figures[what] = {"ok": ok, "seconds": round(dt, 3), "MB_per_s": round(moved / dt / 1e6, 1)}
                    except Exception as exc:
                        dt = time.perf_counter() - t0
                        figures[what] = {"ok": False, "seconds": round(dt, 3), "error": f"{type(exc).__name__}: {exc}"[:300]}
                    print(what, figures[what], flush=True)
                after = {s["id"] for s in ex.servers()}
                figures["servers_before"], figures["servers_after"] = len(before), len(after)
                figures["leases_lost"] = len(before - after)
            finally:  # a job that timed out must not keep this process waiting
                ex.shutdown(wait=False, cancel_futures=True)
        finally:
            peak.stop.set()
            peak.join(1)
            figures["peak_rss_gib"] = round(peak.peak / 2**30, 2)
            stop_cluster(proc)
            text = log.read_text()
            if not all(figures.get(w, {}).get("ok") for w in a.only.split(",")):
                print("cluster log (tail):\n" + text[-3000:], file=sys.stderr)
    print(json.dumps(figures, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
