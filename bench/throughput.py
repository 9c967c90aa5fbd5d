"""Jobs per second for tiny Python jobs and for native services, archiving on and off,
with concurrent.futures.ProcessPoolExecutor measured in the same run for comparison.

    .venv/bin/python bench/throughput.py            # full run
    .venv/bin/python bench/throughput.py --quick    # a smoke run (CI)
"""
import argparse
import concurrent.futures as cf
import os
import tempfile
import time

import dynexec


def inc(x):
    return x + 1


def rate(run, n, repeat):
    """Best jobs/s over `repeat` runs of `run(n)`."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def submit_all(ex, n):
    for f in [ex.submit(inc, i) for i in range(n)]:
        f.result()


def services_all(ex, n, service, **params):
    for f in [ex.submit_service(service, **params) for _ in range(n)]:
        f.result()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="compute servers / worker processes")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs per measurement")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    p.add_argument("--quick", action="store_true", help="a small run that only shows the benchmark works")
    a = p.parse_args()
    if a.quick:
        a.jobs, a.repeat = 500, 1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes, archive in ((True, False), (True, os.path.join(tmp, "a1")), (False, os.path.join(tmp, "a2"))):
            label = ("processes" if processes else "threads") + (", archived" if archive else ", no archive")
            with dynexec.Executor(max_workers=a.workers, archive=archive, processes=processes) as ex:
                rows.append((f"dynexec python tiny, {label}", rate(lambda n: submit_all(ex, n), a.jobs, a.repeat)))
                rows.append((f"dynexec native noop, {label}",
                             rate(lambda n: services_all(ex, n, "noop", x=1.0), a.jobs, a.repeat)))
                rows.append((f"dynexec native pi 1e4 samples, {label}",
                             rate(lambda n: services_all(ex, n, "pi.monte_carlo", samples=10_000), a.jobs // 4, a.repeat)))
    with cf.ProcessPoolExecutor(a.workers) as pool:
        submit_all(pool, 100)  # start the workers
        peer = rate(lambda n: submit_all(pool, n), a.jobs, a.repeat)
    rows.append(("ProcessPoolExecutor python tiny", peer))

    print(f"{a.workers} workers, {a.jobs} jobs per measurement, best of {a.repeat}")
    print(f"{'workload':52} {'jobs/s':>12} {'vs ProcessPool':>15}")
    for name, r in rows:
        print(f"{name:52} {r:12,.0f} {r / peer:14.2f}x")


if __name__ == "__main__":
    main()
