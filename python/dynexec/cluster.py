"""A dynexec cluster started with mpirun.

    mpirun -n N python -m dynexec.cluster --archive DIR --connection-file FILE [--server-file SFILE]

or, so that the cluster outlives a lost server rank (mpirun's fault tolerance on; see dynexec.launch):

    python -m dynexec.launch -n N [mpirun options] -- --archive DIR --connection-file FILE ...

Rank 0 becomes the head: the lookup registry, execution manager, load balancer and results manager,
listening on a CURVE-secured ZeroMQ endpoint. It hands that endpoint and the compute servers' credentials
to every other rank through MPI (no host names or ports in any configuration), and each of those ranks
becomes one compute server. Once the servers have registered, the head writes two files (owner-only
permissions), one per role, and prints "dynexec cluster ready: ...":

    FILE   the client connection file, for scripts and notebooks:  dynexec.Executor(connect=FILE)
    SFILE  the server join file (default: FILE with the suffix .server.json, e.g. cluster.server.json):
           python -m dynexec.server --join SFILE              # one more compute server
           mpirun -n K python -m dynexec.server --join SFILE  # K more

Each holds the credentials of its role only: a client cannot register as a compute server (whose results
other clients unpickle), and a compute server cannot submit jobs. A cluster refuses at once to overwrite
the files of a live cluster (naming its host and pid) and replaces stale ones (their head gone), saying so.

The cluster runs until a client calls Executor.shutdown_cluster() or mpirun is interrupted (Ctrl-C); then
every server is told to leave, the archive is closed complete, both files are removed (those still its
own) and mpirun exits.

Each compute-server rank runs its server as a child process and exits normally when that child ends, so
kill -9 of a compute server (the pid shown by Executor.servers()) does not make mpirun abort the other
ranks: the server's lease runs out and its jobs run on the others. Without mpirun this runs a head only;
servers join it later.
"""
from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import _core, connection

_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


def under_mpirun() -> bool:
    """True in a process started by mpirun (or another MPI launcher)."""
    return any(v in os.environ for v in _MPI_ENV)


class _Signals:
    """SIGINT/SIGTERM set a flag (and call `then`) instead of raising in the middle of a C++ call."""

    def __init__(self, then=None):
        self.count = 0
        self.first = 0.0  # when the first came (monotonic)
        self.event = threading.Event()
        self._then = then
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.count += 1
        if self.count == 1:
            self.first = time.monotonic()
        self.event.set()
        if self._then is not None:
            self._then(signum)


PROBE_INTERVAL = 1.0  # seconds between a silent head's probes


def _wait_for_head(candidates: list[str], used: str, timeout: float, stop: threading.Event) -> str | None:
    """After the head fell silent: the first endpoint that accepts a TCP connection again (a cut link is back),
    or None once the head is gone (the endpoint used refuses: its host answers, nothing listens there), after
    `timeout` seconds, or when `stop` is set."""
    if not used.startswith("tcp://"):
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        first, why = connection._first_answering(candidates, 1.0)
        if first is not None:
            return first
        if why.get(used) == os.strerror(errno.ECONNREFUSED):
            return None
        stop.wait(PROBE_INTERVAL)
    return None


def supervise_server(info: dict, slots: int = 1, threads: int = 0, head_timeout: float = 10.0,
                     max_restarts: int = 10, rejoin_timeout: float = 300.0) -> int:
    """Runs one compute server as a child process, starts another when it dies, and returns 0 once it ends
    for good (told to stop, the head gone, a signal to this rank, or `max_restarts` restarts within
    RESTART_WINDOW seconds).

    Under mpirun a rank that dies makes mpirun abort the whole job; a rank that only watches its server
    and exits normally when the server is gone (kill -9 included) leaves the other ranks running.
    A server that heard nothing from the head for `head_timeout` s leaves; if the head's host does not answer
    either (a cut link, not a head that is gone), this rank waits up to `rejoin_timeout` s for it and then
    starts a server that registers again.
    """
    from .local import describe_end

    private = Path(tempfile.mkdtemp(prefix="dynexec-server-"))  # 0700; the file inside is 0600
    child = None
    try:
        candidates = connection.endpoints(info)
        try:  # of the head's candidate endpoints, the first this host reaches: the server is given that one
            endpoint = connection.pick_endpoint(candidates)
        except ConnectionError as e:
            print(f"dynexec server: {e}", file=sys.stderr, flush=True)
            return 0
        join = connection.write(private / "server.json", [endpoint], info, role="server")
        cmd = [sys.executable, "-m", "dynexec.server", "--join", str(join), "--slots", str(slots),
               "--threads", str(threads), "--head-timeout", str(head_timeout), "--parent-pid", str(os.getpid())]

        def forward(signum):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

        signals = _Signals(forward)
        restarts: list[float] = []
        replaces: list[str] = []
        while True:
            child = subprocess.Popen(cmd + replaces, stdin=subprocess.DEVNULL)
            if signals.count:  # a signal that came before the child existed
                forward(signal.SIGTERM)
            while child.poll() is None:
                try:
                    child.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            code = child.returncode
            back = None
            if code == 2 and not signals.count:  # the head fell silent: gone, or out of reach for a while
                back = _wait_for_head(candidates, endpoint, rejoin_timeout, signals.event)
                if back is None:
                    return 0
            # 0: told to stop; 2: the head is gone; 3: this rank is gone; 5: the head refused it (another
            # version, a service conflict); a signal we forwarded: all final.
            elif signals.count or code in (0, 3, 5, -signal.SIGTERM, -signal.SIGINT):
                return 0
            why = describe_end(code) if back is None else "heard nothing from the head"
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW]
            if len(restarts) >= max_restarts:
                print(f"dynexec: compute server (pid {child.pid}) {why}; {len(restarts)} restarts in the last "
                      f"{RESTART_WINDOW:g} s, so this rank leaves the cluster", file=sys.stderr, flush=True)
                return 0
            restarts.append(now)
            if back is not None:
                print(f"dynexec: the head at {back} answers again; starting a compute server that registers "
                      f"again ({len(restarts)} of {max_restarts} restarts allowed in {RESTART_WINDOW:g} s)",
                      file=sys.stderr, flush=True)
                endpoint = back
                connection.write(join, [endpoint], info, role="server")
            elif code != 4:  # 4: it ended on purpose, to stop a job that would not stop
                print(f"dynexec: compute server (pid {child.pid}) {why}; starting another "
                      f"({len(restarts)} of {max_restarts} restarts allowed in {RESTART_WINDOW:g} s)",
                      file=sys.stderr, flush=True)
            replaces = ["--replaces", str(child.pid), "--replaced-because", why]
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(private, ignore_errors=True)


RESTART_WINDOW = 300.0  # seconds over which a rank's server restarts are counted


def _advertised(endpoint: str, host: str) -> str:
    """tcp://0.0.0.0:PORT as the other hosts reach it."""
    scheme, _, rest = endpoint.partition("://")
    port = rest.rsplit(":", 1)[1]
    return f"{scheme}://{host}:{port}"


def _wait_plugins(engine, names, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(set(names) <= set(s["services"]) for s in engine.servers()):
            return
        time.sleep(0.02)


class _Head:
    def __init__(self, args, comm):
        self.args, self.comm = args, comm
        self.engine = None
        self.abandoned = False
        self.connection_file = Path(args.connection_file).absolute()
        self.server_file = Path(args.server_file or connection.server_file_for(self.connection_file)).absolute()

    def start(self, hosts: list[str]) -> dict:
        """Creates the engine; returns what every compute-server rank needs to join it."""
        a = self.args
        everyone_here = all(h == hosts[0] for h in hosts)
        bind = a.bind or ("tcp://127.0.0.1:*" if everyone_here else "tcp://0.0.0.0:*")
        self.keys = connection.new_keys()
        self.archive = Path(a.archive).absolute() if a.archive else None
        self.engine = _core.Engine(0, a.slots, a.threads, a.policy, self.archive, a.lease_seconds,
                                   a.renew_seconds, a.max_attempts, a.seed,
                                   listen={"bind": bind, **connection.listen_keys(self.keys)})
        if self.archive is not None:  # the session is the cluster's: its archive file says so
            from . import _jobinfo
            info = [kv for kv in _jobinfo.session_info("cluster") if kv[0] != "script"]
            self.engine.set_session_info(info + [("script", "python -m dynexec.cluster")])
        self.endpoints = [self.engine.endpoint]
        if "://0.0.0.0:" in self.engine.endpoint or "://*:" in self.engine.endpoint:
            # Host names often do not resolve on other hosts (or resolve to 127.0.1.1): every interface
            # address is a candidate, the host name last; servers and clients take the first that answers.
            names = [a.advertise] if a.advertise else connection.interface_addresses() + [hosts[0]]
            self.endpoints = [_advertised(self.engine.endpoint, h) for h in names]
        self.endpoint = self.endpoints[0]
        self.plugin_names = []
        for path in a.plugin:
            path = str(Path(path).resolve())
            names = _core.load_services(path)  # the head validates jobs against its own catalog
            self.engine.load_plugin(path, names, 0.0)  # every server that joins loads it
            self.plugin_names += names
        # The compute servers' credentials only: the clients' secret stays with the head.
        return {"endpoint": self.endpoint, "endpoints": self.endpoints, **connection.credentials(self.keys, "server")}

    def serve(self, n_servers: int) -> int:
        a, engine = self.args, self.engine
        signals = _Signals()
        deadline = time.monotonic() + a.start_timeout
        have = 0
        while have < n_servers and time.monotonic() < deadline and not signals.event.is_set():
            have = engine.wait_for_servers(n_servers, min(0.2, max(0.0, deadline - time.monotonic())))
        if signals.event.is_set():  # interrupted while starting: no connection file, no ready line
            return self.stop(signals)
        if have < n_servers:
            print(f"dynexec cluster: only {have} of {n_servers} compute servers registered within "
                  f"{a.start_timeout:g} s; going on with those", file=sys.stderr, flush=True)
        if self.plugin_names and have:
            _wait_plugins(engine, self.plugin_names, 10.0)
        try:
            self.claim_files()  # another cluster may have taken the files while this one waited for servers
        except FileExistsError as e:
            print(f"dynexec cluster: {e}", file=sys.stderr, flush=True)
            self.stop(signals)
            return 1
        connection.write(self.server_file, self.endpoints, self.keys, "server")
        connection.write(self.connection_file, self.endpoints, self.keys, "client", session=engine.session,
                         archive=str(self.archive) if self.archive else None, policy=a.policy,
                         lease_seconds=a.lease_seconds, mpi_size=n_servers + 1)
        published = self._publish()
        n = len(engine.servers())
        print(f"dynexec cluster ready: {n} server{'' if n == 1 else 's'}, connection file {self.connection_file}, "
              f"server join file {self.server_file}" + (f", published as {a.publish!r}" if published else ""),
              flush=True)
        gateway = self._start_gateway()
        if not n:
            print(f"dynexec cluster: no compute server: jobs wait until one joins with "
                  f"`python -m dynexec.server --join {self.server_file}`", file=sys.stderr, flush=True)
        try:
            while not signals.event.is_set():
                if engine.wait_shutdown_request(0.2):
                    break
            return self.stop(signals)
        finally:
            if gateway is not None and gateway.poll() is None:
                gateway.terminate()
                try:
                    gateway.wait(5)
                except subprocess.TimeoutExpired:
                    gateway.kill()
            self._remove_files()
            if published:
                self._publish(unpublish=True)

    def _start_gateway(self):
        """--gateway PORT: the HTTP gateway (dynexec.gateway) as a child process; it leaves with this head."""
        a = self.args
        if a.gateway is None:
            return None
        users = a.gateway_users or str(self.connection_file.with_name(self.connection_file.stem + ".users.json"))
        return subprocess.Popen([sys.executable, "-m", "dynexec.gateway", "--connect", str(self.connection_file),
                                 "--users", users, "--port", str(a.gateway), "--parent-pid", str(os.getpid())],
                                stdin=subprocess.DEVNULL)

    def claim_files(self) -> None:
        """Refuses (FileExistsError) to replace the files of a live cluster; says so when replacing stale ones."""
        for path in (self.connection_file, self.server_file):
            note = connection.claim(path)
            if note:
                print(note, file=sys.stderr, flush=True)

    def _remove_files(self) -> None:
        for path in (self.connection_file, self.server_file):
            connection.remove_if_ours(path)  # another cluster's (one that replaced a file we left) stays

    def _publish(self, unpublish=False) -> bool:
        """--publish NAME: the endpoint and the head's public key (never a secret) in the MPI name service."""
        if not self.args.publish or self.comm is None:
            return False
        from mpi4py import MPI

        value = f"{self.endpoint} {self.keys['server_public_key']}"
        try:
            (MPI.Unpublish_name if unpublish else MPI.Publish_name)(self.args.publish, value)
            return True
        except MPI.Exception as e:
            print(f"dynexec cluster: cannot {'un' if unpublish else ''}publish {self.args.publish!r} in the MPI "
                  f"name service (start mpirun with --ompi-server): {e}", file=sys.stderr, flush=True)
            return False

    def stop(self, signals: _Signals) -> int:
        """Finishes what was submitted, tells every server to leave and closes the archive.

        On Ctrl-C mpirun stops the servers too, and kills every rank a second later: so after a signal,
        jobs still unfinished after --stop-grace seconds (or at a second signal) are given up; the archive
        is closed either way. Returns 0, or 1 when jobs were given up.
        """
        engine = self.engine
        self._remove_files()  # no new client finds a cluster that is going away
        done = threading.Event()

        def graceful():
            try:
                engine.shutdown(True, False)
            finally:
                done.set()

        threading.Thread(target=graceful, name="dynexec-shutdown", daemon=True).start()
        while not done.wait(0.05):
            if signals.event.is_set() and (signals.count > 1
                                           or time.monotonic() - signals.first >= self.args.stop_grace):
                break
        if done.is_set():
            return 0
        s = engine.stats()
        print(f"dynexec cluster: stopping with {s['submitted'] - s['delivered']} jobs unfinished",
              file=sys.stderr, flush=True)
        # Failed, not cancelled: their clients did not cancel them, the cluster went away. With every job
        # delivered, the graceful shutdown above ends by itself.
        engine.fail_pending("ShutDownError", f"the cluster at {self.endpoint} was stopped")
        if not done.wait(5.0):
            self.abandoned = True  # the graceful thread still waits inside the engine: leave without it
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynexec.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", required=True, metavar="DIR", help="directory of the HDF5 results archive")
    p.add_argument("--connection-file", required=True, metavar="FILE",
                   help="where to write the client connection file (for Executor(connect=FILE))")
    p.add_argument("--server-file", default="", metavar="SFILE",
                   help="where to write the server join file, for `python -m dynexec.server --join SFILE` "
                        "(default: FILE with the suffix .server.json)")
    p.add_argument("--policy", default="power_of_two", choices=list(_core.POLICIES),
                   help="how the load balancer picks a server (default power_of_two)")
    p.add_argument("--lease-seconds", type=float, default=2.0, help="registration lease (default 2)")
    p.add_argument("--renew-seconds", type=float, default=0.0, help="lease renewal interval (default lease/4)")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="how many vanished servers a job may outlive before it fails (default 3)")
    p.add_argument("--slots", type=int, default=1, help="jobs each compute server runs at once (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="oneTBB threads per server for native services (default: the host's cores shared "
                        "among its ranks)")
    p.add_argument("--plugin", action="append", default=[], metavar="PATH",
                   help="native service plugin every server loads (repeatable)")
    p.add_argument("--publish", default="", metavar="NAME",
                   help="also publish the endpoint under NAME in the MPI name service (mpirun --ompi-server); "
                        "servers then join with --name NAME, still taking their credentials from the server join file")
    p.add_argument("--gateway", type=int, default=None, metavar="PORT",
                   help="also run the HTTP gateway on 127.0.0.1:PORT (python -m dynexec.gateway; 0: any free port)")
    p.add_argument("--gateway-users", default="", metavar="FILE",
                   help="the gateway's users file (default: FILE with the suffix .users.json)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--bind", default="", help="ZeroMQ endpoint the head binds (default: loopback when every "
                                              "rank is on this host, else all interfaces)")
    p.add_argument("--advertise", default="", metavar="HOST",
                   help="the one host name or address written into the connection files when binding all "
                        "interfaces (default: rank 0's interface IPv4 addresses, then its host name; servers "
                        "and clients take the first that accepts a connection)")
    p.add_argument("--start-timeout", type=float, default=60.0,
                   help="how long the head waits for the servers of this mpirun to register (default 60)")
    p.add_argument("--stop-grace", type=float, default=0.5,
                   help="on Ctrl-C, seconds to wait for unfinished jobs before giving them up (default 0.5)")
    p.add_argument("--head-timeout", type=float, default=10.0,
                   help="a server leaves after this many seconds without a word from the head (default 10)")
    p.add_argument("--rejoin-timeout", type=float, default=300.0,
                   help="after that, while the head's host does not answer either (a cut link), its rank waits this "
                        "many seconds for it and then starts a server that registers again (default 300)")
    return p


def main(argv=None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.slots < 1:
        p.error("--slots must be at least 1")
    if a.lease_seconds <= 0 or not 0 <= a.renew_seconds < a.lease_seconds:
        p.error("need --lease-seconds > 0 and 0 <= --renew-seconds < --lease-seconds")
    if a.max_attempts < 1:
        p.error("--max-attempts must be at least 1")
    if a.server_file and Path(a.server_file).absolute() == Path(a.connection_file).absolute():
        p.error("--server-file must differ from --connection-file: each role has a file of its own")

    comm = None
    if under_mpirun():
        from mpi4py import MPI  # only under mpirun: a singleton MPI_Init would start an orted for nothing

        comm = MPI.COMM_WORLD
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    host = socket.gethostname()
    hosts = comm.allgather(host) if comm is not None else [host]
    if not a.threads:  # the ranks on one host share its cores (or each has those mpirun bound it to)
        a.threads = max(1, min(len(os.sched_getaffinity(0)), (os.cpu_count() or 1) // hosts.count(host)))

    if rank != 0:
        info = comm.bcast(None, root=0)
        if "error" in info:
            return 1  # rank 0 says why
        return supervise_server(info, a.slots, a.threads, a.head_timeout, rejoin_timeout=a.rejoin_timeout)

    head = _Head(a, comm)
    try:
        head.claim_files()  # before binding and before waiting for servers: a clash is said at once
        info = head.start(hosts)
    except Exception as e:
        if comm is not None:
            comm.bcast({"error": str(e)}, root=0)
        print(f"dynexec cluster: cannot start the head: {e}", file=sys.stderr, flush=True)
        return 1
    if comm is not None:
        comm.bcast(info, root=0)  # MPI-based discovery: the endpoint and server credentials reach every rank
    code = head.serve(size - 1)
    # The last line: dynexec.launch ends an mpirun that hangs after a lost rank once it sees it (launch.STOPPED).
    print(f"dynexec cluster stopped (exit code {code})", flush=True)
    if head.abandoned:  # a thread still waits inside the engine: destroying it now is not safe
        sys.stdout.flush()
        sys.stderr.flush()
        if comm is not None:
            MPI.Finalize()  # mpirun takes a rank that leaves without it for a crash
        os._exit(code)
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
