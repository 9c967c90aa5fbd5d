"""Starts a dynexec cluster with mpirun, so that it outlives any one compute-server rank.

    python -m dynexec.launch -n N [mpirun options] -- [python -m dynexec.cluster options]

e.g.  python -m dynexec.launch -n 4 --hostfile hosts -- --archive results --connection-file cluster.json

By default mpirun aborts every rank when one dies (kill -9 of a rank, its node lost, a cut link). This runs
mpirun with its fault tolerance on (--enable-recovery) and without the abort on a rank's non-zero exit, so the
head, the other servers and every client keep running; the lost server's jobs run elsewhere after its lease.
Ctrl-C (SIGINT) and SIGTERM go to mpirun, which stops the cluster as usual; the exit code is mpirun's.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

# Open MPI 4.1: --enable-recovery keeps the job going when a rank dies (kill -9, its node or link lost); the
# MCA setting keeps it going when a rank exits non-zero too.
RECOVERY = ["--enable-recovery", "--mca", "orte_abort_on_non_zero_status", "0"]


def command(argv: list[str], mpirun: str = "mpirun") -> list[str]:
    """The mpirun command line for `launch` arguments: mpirun options before `--`, cluster options after."""
    if "--" in argv:
        i = argv.index("--")
        mpi, cluster = argv[:i], argv[i + 1:]
    else:
        mpi, cluster = argv, []
    return [mpirun, *RECOVERY, *mpi, sys.executable, "-m", "dynexec.cluster", *cluster]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    mpirun = os.environ.get("DYNEXEC_MPIRUN") or shutil.which("mpirun")
    if mpirun is None:
        print("dynexec.launch: mpirun is not on PATH (Debian: apt install openmpi-bin)", file=sys.stderr)
        return 2
    # Its own process group: a terminal's Ctrl-C reaches mpirun once, from here (a second one kills every rank).
    proc = subprocess.Popen(command(argv, mpirun), stdin=subprocess.DEVNULL, process_group=0)

    def forward(signum, frame):  # mpirun turns these into the cluster's orderly stop
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    return proc.wait()  # a signal handled above does not interrupt it (PEP 475)


if __name__ == "__main__":
    sys.exit(main())
