"""Quickstart: Python jobs and native services on local compute servers, every result archived in HDF5.

Run it with `make demo`, or `.venv/bin/python examples/quickstart.py` once installed.
"""
import concurrent.futures as cf
import random

import dynexec

ARCHIVE = "dynexec-archive"  # a directory of HDF5 files, one per session


def simulate(seed, steps=200_000):
    """A random walk: a stand-in for your own simulation."""
    rng = random.Random(seed)
    x = 0
    for _ in range(steps):
        x += 1 if rng.random() < 0.5 else -1
    return x


with dynexec.Executor(archive=ARCHIVE) as ex:
    print(f"{len(ex.servers())} compute servers, session {ex.session}")

    futures = {ex.submit(simulate, seed): seed for seed in range(16)}
    for done, f in enumerate(cf.as_completed(futures), 1):
        print(f"  [{done:2}/{len(futures)}] seed {futures[f]:2} -> {f.result():5}   (job {f.job_id})")

    pi = ex.submit_service("pi.monte_carlo", samples=10_000_000)
    call = ex.submit_service("option.european", spot=100.0, strike=105.0, rate=0.05, volatility=0.2, maturity=1.0)
    print(f"pi ~ {pi.result():.5f}")
    price, stderr = call.result()
    print(f"European call ~ {price:.4f} +/- {stderr:.4f}")

    for s in ex.servers():
        print(f"  {s['id']}: {s['statistics']['jobs_done']} jobs, {s['statistics']['busy_time']:.2f} s busy")

# Later, in any process: the results finder gets a result back by its job ID.
r = dynexec.find(pi.job_id, archive=ARCHIVE)
print(f"found {r.job_id}: {r.status}, value {r.value:.5f}, ran on {r.server}, stored at {r.location}")
