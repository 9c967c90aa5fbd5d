"""A compute-server process: `python -m dynexec.server --join FILE`.

FILE is the cluster's server join file (`dynexec.cluster --server-file`, by default next to the client
connection file, with the suffix .server.json): it holds the compute servers' credentials, not the clients'.
Registers with the head named there, on a lease it renews, runs the jobs it is sent
(Python callables and native services) and sends the results back. Under mpirun, every rank becomes one
compute server (run by a child process of the rank, so that kill -9 of one server does not make mpirun
abort the others). It leaves when the head says stop, when the head falls silent, or on SIGTERM/SIGINT.
"""
import argparse
import os
import signal
import sys
import threading
import time

from . import _core, connection


def serve(info: dict, slots: int = 1, threads: int = 0, parent_pid: int = 0, head_timeout: float = 10.0,
          replaces: tuple[int, str] = (0, "")) -> int:
    host = _core.ServerHost(info["endpoint"], info["server_public_key"], info["compute_public_key"],
                            info["compute_secret_key"], slots, threads, parent_pid, head_timeout, *replaces)
    # Python runs signal handlers in the main thread only, between bytecodes: host.run() goes in another
    # thread, so that SIGTERM/SIGINT reach host.stop() while it serves.
    outcome = {}

    def run():
        try:
            outcome["code"] = host.run()
        except BaseException as e:
            outcome["error"] = e

    stopped = []

    def stop(*_):
        stopped.append(time.monotonic())
        host.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    thread = threading.Thread(target=run, name="dynexec-server", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if stopped and time.monotonic() - stopped[0] > 5.0:
            return 1  # stuck (e.g. in a send the head never takes): leave anyway
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


def lookup(name: str) -> dict:
    """The head's endpoint and public key, from the MPI name service."""
    from mpi4py import MPI

    try:
        endpoint, server_public_key = MPI.Lookup_name(name).split()
    except MPI.Exception as e:
        sys.exit(f"dynexec server: no cluster published as {name!r} in the MPI name service "
                 f"(is mpirun started with --ompi-server?): {e}")
    return {"endpoint": endpoint, "server_public_key": server_public_key}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dynexec.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--join", required=True, metavar="FILE", help="the cluster's server join file (dynexec.cluster --server-file; not the "
                                                         "clients' connection file)")
    p.add_argument("--slots", type=int, default=1, help="jobs this server runs at once (default 1)")
    p.add_argument("--threads", type=int, default=0, help="oneTBB threads for native services (default: all cores)")
    p.add_argument("--name", default="", metavar="NAME",
                   help="find the head through the MPI name service (mpirun --ompi-server) under NAME, as published "
                        "by `dynexec.cluster --publish NAME`; the credentials still come from --join FILE")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    # Set by a rank's supervisor for the server that replaces one that died: the head charges its jobs now.
    p.add_argument("--replaces", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--replaced-because", default="", help=argparse.SUPPRESS)
    p.add_argument("--head-timeout", type=float, default=10.0,
                   help="leave after this many seconds without a word from the head (default 10; inf: never, "
                        "for a head that may be stopped and resumed, with --parent-pid to leave when it is gone)")
    a = p.parse_args(argv)
    if a.slots < 1:
        p.error("--slots must be at least 1")
    try:
        info = connection.read(a.join, role="server")
    except (OSError, ValueError) as e:
        p.error(str(e))
    if a.name:
        info = {k: v for k, v in {**info, **lookup(a.name)}.items() if k != "endpoints"}
    if not a.parent_pid:
        from .cluster import supervise_server, under_mpirun

        if under_mpirun():  # a rank that dies makes mpirun abort its other ranks: serve from a child instead
            sys.exit(supervise_server(info, a.slots, a.threads, a.head_timeout))
    try:  # of the head's candidate endpoints, the first this host reaches
        info = {**info, "endpoint": connection.pick_endpoint(connection.endpoints(info), source=a.join)}
    except ConnectionError as e:
        p.exit(2, f"dynexec server: {e}\n")  # 2, as when the head falls silent: the rank does not restart it
    code = serve(info, a.slots, a.threads, a.parent_pid, a.head_timeout, (a.replaces, a.replaced_because))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a job still running: the head has given it to another server


if __name__ == "__main__":
    main()
