"""Round trips, one job at a time: `submit(noop, i).result()`, p50 and p90 of 2,000, three times.

    .venv/bin/python bench/round_trip.py on    # every result archived (a fresh temp directory)
    .venv/bin/python bench/round_trip.py off   # archive=False
Run it against two builds in turn (PYTHONPATH=<checkout>/python for the other) to compare them on one machine.
"""
import os, sys, tempfile, time
import dynexec
def noop(x):
    return x
if __name__ == "__main__":
    archive = tempfile.mkdtemp() if sys.argv[1] == "on" else False
    with dynexec.Executor(max_workers=2, archive=archive) as ex:
        for i in range(500):
            ex.submit(noop, i).result()
        for rep in range(3):
            ts = []
            for i in range(2000):
                t = time.perf_counter(); ex.submit(noop, i).result(); ts.append(time.perf_counter() - t)
            ts.sort()
            print(f"{os.path.dirname(dynexec.__file__)} archive {sys.argv[1]}: p50 {ts[len(ts)//2]*1e3:.3f} ms p90 {ts[len(ts)*9//10]*1e3:.3f}")
