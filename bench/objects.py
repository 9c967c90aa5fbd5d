"""A large object used by many jobs: sent once per compute server (dynexec.objects) against once per job.

    .venv/bin/python bench/objects.py              # 50 MB, 20 jobs, 2 servers
    .venv/bin/python bench/objects.py --mb 200 --jobs 40

Rows, each timed from the first submit to the last result:
  dynexec, a global         a function of __main__ whose 50 MB global array goes once per server
  dynexec, scatter          the array given as ex.scatter(array), a handle per job
  dynexec, objects off      the same global with the once-per-server path off (THRESHOLD = infinity):
                            what every job cost before
  ProcessPoolExecutor       the array as an argument of each job (pickled for each)
The ratios are against ProcessPoolExecutor, measured in the same run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import time

import numpy as np

import dynexec
from dynexec import objects

BIG = None


def use_global(i):
    return float(BIG[i])


def use_arg(a, i):
    return float(a[i])


def timed(run) -> float:
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=50)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    global BIG
    BIG = np.random.rand(a.mb * 2**20 // 8)
    n, rows = a.jobs, {}
    with dynexec.Executor(max_workers=a.workers, archive=False) as ex:
        ex.submit(use_arg, np.zeros(8), 0).result()  # servers up
        rows["dynexec, a global"] = timed(lambda: [f.result() for f in [ex.submit(use_global, i) for i in range(n)]])
        sent = ex.stats()["objects_sent"]
        h = ex.scatter(BIG)
        rows["dynexec, scatter"] = timed(lambda: [f.result() for f in [ex.submit(use_arg, h, i) for i in range(n)]])
        h.release()
        threshold, objects.THRESHOLD = objects.THRESHOLD, math.inf
        try:
            rows["dynexec, objects off"] = timed(
                lambda: [f.result() for f in [ex.submit(use_global, i) for i in range(n)]])
        finally:
            objects.THRESHOLD = threshold
    with concurrent.futures.ProcessPoolExecutor(a.workers) as pp:
        pp.submit(use_arg, np.zeros(8), 0).result()
        rows["ProcessPoolExecutor"] = timed(lambda: [f.result() for f in [pp.submit(use_arg, BIG, i)
                                                                          for i in range(n)]])
    peer = rows["ProcessPoolExecutor"]
    print(f"{a.mb} MB object, {n} jobs, {a.workers} servers (dynexec sent the global {sent} time(s))")
    for name, s in rows.items():
        print(f"  {name:<22} {s:7.2f} s   {peer / s:6.1f}x ProcessPoolExecutor")


if __name__ == "__main__":
    main()
