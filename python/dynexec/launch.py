"""Starts a dynexec cluster with mpirun, so that it outlives any one compute-server rank.

    python -m dynexec.launch -n N [mpirun options] -- [python -m dynexec.cluster options]

e.g.  python -m dynexec.launch -n 4 --hostfile hosts -- --archive results --connection-file cluster.json

By default mpirun aborts every rank when one dies (kill -9 of a rank, its node lost, a cut link). This runs
mpirun with its fault tolerance on (--enable-recovery) and without the abort on a rank's non-zero exit, so the
head, the other servers and every client keep running; the lost server's jobs run elsewhere after its lease.
Ctrl-C (SIGINT) and SIGTERM go to mpirun, which stops the cluster as usual; the exit code is mpirun's.

Once a rank was lost, Open MPI 4.1's mpirun may never exit after the cluster stopped: a remote daemon that
lost one of its ranks never reports the others' ends. So when the head says it stopped (its last line, which
reaches this process through mpirun's output), mpirun gets STOP_WAIT seconds to end by itself and is then
terminated, which ends its daemons; the exit code is then the head's.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

# Open MPI 4.1: --enable-recovery keeps the job going when a rank dies (kill -9, its node or link lost); the
# MCA setting keeps it going when a rank exits non-zero too.
RECOVERY = ["--enable-recovery", "--mca", "orte_abort_on_non_zero_status", "0"]
STOPPED = b"dynexec cluster stopped (exit code "  # the head's last line: "...(exit code N)"
STOP_WAIT = 5.0  # seconds mpirun has to end by itself after the head stopped


def _relay(out, to, stopped: list, said: threading.Event) -> None:
    """Copies mpirun's output to `to` line by line; notes the head's exit code when it says it stopped."""
    for line in iter(out.readline, b""):
        try:
            to.write(line)
            to.flush()
        except OSError:  # our stdout is gone (a closed pipe): keep reading, or mpirun would block on its output
            pass
        if line.startswith(STOPPED):
            try:
                stopped.append(int(line[len(STOPPED):].split(b")")[0]))
            except ValueError:
                stopped.append(1)
            said.set()


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
    proc = subprocess.Popen(command(argv, mpirun), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            process_group=0)
    stopped: list[int] = []
    said = threading.Event()
    relay = threading.Thread(target=_relay, args=(proc.stdout, sys.stdout.buffer, stopped, said), daemon=True)
    relay.start()

    def forward(signum, frame):  # mpirun turns these into the cluster's orderly stop
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    deadline = None  # STOP_WAIT after the head said it stopped
    while True:  # a signal handled above does not interrupt the waits (PEP 475)
        try:
            code = proc.wait(0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        if said.is_set():
            deadline = deadline or time.monotonic() + STOP_WAIT
            if time.monotonic() > deadline:
                print(f"dynexec.launch: mpirun did not end {STOP_WAIT:g} s after the cluster stopped (the "
                      "daemon of a lost rank); terminating it", file=sys.stderr, flush=True)
                proc.terminate()  # mpirun ends its daemons, and any rank left
                try:
                    proc.wait(STOP_WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = stopped[0]
                break
    relay.join(5)
    return code


if __name__ == "__main__":
    sys.exit(main())
