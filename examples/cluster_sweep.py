"""A parameter sweep on a running dynexec cluster: every point a job, every result archived by its job ID.

Start a cluster (1 head + 3 compute servers here; on a batch system, as many ranks as you were given):

    mpirun -n 4 python -m dynexec.cluster --archive sweep-archive --connection-file cluster.json &

It prints "dynexec cluster ready: 3 servers, connection file ..., server join file ..." once it takes jobs
(cluster.json for clients, cluster.server.json for compute servers). Then, from any shell
or notebook on a machine that reaches it (this script is not started by mpirun):

    python examples/cluster_sweep.py cluster.json

More servers may join while it runs (with the server join file), and get work as soon as they register:

    mpirun -n 2 python -m dynexec.server --join cluster.server.json

Stop the cluster (every process it started ends; the archive is closed complete):

    python examples/cluster_sweep.py cluster.json --stop      # or Ctrl-C on the first mpirun
"""
import itertools
import random
import sys
import time

import dynexec


def first_passage(drift, volatility, paths=2000, steps=250, barrier=1.0, seed=0):
    """Monte Carlo: the share of random-walk paths that reach `barrier` within `steps` (a stand-in for your own
    simulation). Defined in this script: it travels to the servers by value, they need no copy of the file."""
    rng = random.Random(seed)
    dt = 1.0 / steps
    hits = 0
    for _ in range(paths):
        x = 0.0
        for _ in range(steps):
            x += drift * dt + volatility * rng.gauss(0.0, dt ** 0.5)
            if x >= barrier:
                hits += 1
                break
    return hits / paths


def main(connection_file, stop=False):
    drifts = [-0.5, 0.0, 0.5, 1.0]
    volatilities = [0.25, 0.5, 1.0, 2.0]
    with dynexec.Executor(connect=connection_file) as ex:
        print(f"{len(ex.servers())} compute servers; results go to {ex.archive}")
        t = time.perf_counter()
        grid = list(itertools.product(drifts, volatilities))
        futures = {point: ex.submit(first_passage, *point, seed=i) for i, point in enumerate(grid)}
        results = {point: f.result() for point, f in futures.items()}
        print(f"{len(grid)} points in {time.perf_counter() - t:.2f} s\n")

        print("P(reach 1.0 within t=1)   volatility:" + "".join(f"{v:>8}" for v in volatilities))
        for d in drifts:
            print(f"  drift {d:>5}" + " " * 24 + "".join(f"{results[d, v]:8.3f}" for v in volatilities))
        print("\njob IDs:")
        for (d, v), f in futures.items():
            print(f"  drift {d:>5}, volatility {v:>5}: {f.job_id}")

        job = futures[drifts[-1], volatilities[0]].job_id
        if stop:
            ex.shutdown_cluster()  # after this executor's jobs: the cluster stops, the archive is closed

    # Any time later, in any process: the results finder gets a result back by its job ID alone.
    r = dynexec.find(job, ex.archive)
    print(f"\ndynexec.find({job!r}):\n  value {r.value}, status {r.status}, ran on {r.server} "
          f"in {r.end_time - r.start_time:.3f} s\n  stored at {r.location}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], stop="--stop" in sys.argv[2:])
