"""A 1 GiB argument and a 1 GiB result on an mpirun cluster on loopback (CURVE over TCP, as across nodes):
each job succeeds, and no compute server loses its lease meanwhile (control is not stuck behind data).

Needs about 7 GiB of memory at its peak (the array in this process, its pickle and the copies on the way),
so it is skipped where less than 12 GiB is available.
"""
import numpy as np
import psutil
import pytest

import dynexec
from test_cluster import pytestmark as cluster_marks, server_ids, start  # noqa: F401  (start: a fixture)

GIB = 1 << 30
pytestmark = [
    *[m for m in cluster_marks if m.name != "timeout"],
    pytest.mark.skipif(psutil.virtual_memory().available < 12 * GIB,
                       reason="needs 12 GiB of available memory for 1 GiB values on their way"),
    pytest.mark.timeout(400),
]


# Jobs: servers import this module by reference (test_cluster's processes have tests/ on PYTHONPATH).
def sample(x):
    return x.nbytes, float(x[:: 1 << 16].sum()), float(x[-1])


def ramp(n):
    out = np.ones(n)
    out[-1] = 7.0
    return out


def test_a_1_gib_argument_and_a_1_gib_result_complete_and_no_server_loses_its_lease(start):
    c = start.cluster(3)  # a head and two compute servers, lease 2 s
    n = GIB // 8
    with dynexec.Executor(connect=c.conn) as ex:
        before = server_ids(ex)
        assert len(before) == 2
        x = np.ones(n)
        x[-1] = 3.0
        f = ex.submit(sample, x)
        del x
        assert f.result(timeout=180) == (GIB, float(len(range(0, n, 1 << 16))), 3.0)

        v = ex.submit(ramp, n).result(timeout=180)
        assert v.shape == (n,) and v.dtype == np.float64
        assert float(v[:: 1 << 16].sum()) == len(range(0, n, 1 << 16)) and v[-1] == 7.0
        del v
        after = server_ids(ex)
    # The same registrations throughout: a server whose lease lapsed would have registered anew (a new id).
    assert set(after) == set(before), f"servers re-registered: before {sorted(before)}, after {sorted(after)}"
    assert c.proc.poll() is None
