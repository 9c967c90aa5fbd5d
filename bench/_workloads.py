"""The functions bench/compare.py runs on every peer's workers.

They live in a module of their own, not in compare.py, because ProcessPoolExecutor, mpi4py.futures and
dask workers unpickle functions by module name: each worker imports `_workloads` (compare.py puts bench/
on the PYTHONPATH of everything it starts), so every peer runs the very same code.
"""
import time


def inc(x):
    return x + 1


def apply_chunk(fn, items):
    """One job for a whole chunk of items (how compare.py batches dask's map)."""
    return [fn(x) for x in items]


def spin(seconds):
    """Pure-Python CPU work for `seconds` of wall-clock time; returns the CPU time the job actually got (s).

    A busy loop on the clock, not a calibrated loop: on a shared (virtual) machine the speed of a core
    drifts by tens of percent from one second to the next, which a calibration cannot follow; a job of
    fixed wall time is the same job for every peer. The CPU time it returns shows when its process had
    to wait for a core.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    return time.process_time() - c0


def ones(n_bytes):
    """A float64 array of n_bytes bytes: a large result."""
    import numpy
    return numpy.ones(n_bytes // 8)
