"""Clusters over test hosts (network namespaces, tests/hosts.py) whose host names resolve nowhere: the head
advertises its interface addresses and servers and clients take one they reach. A cluster started with
dynexec.launch outlives a server rank killed, a server host's link cut (shorter or longer than the head
timeout) and a host that dies, mid-run: every job ok and archived once, the cut host's server takes work
again. A client's helper module reaches server hosts that do not have it."""
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dynexec
from hosts import SIDE, SUBNET, four_hosts, hosts, make_hosts  # noqa: F401 (the fixtures)
from test_cluster import MPIRUN, Cluster, Job, alive, pytestmark, wait_for  # noqa: F401 (the same skips and time limit)


class HostsCluster(Cluster):
    """mpirun on host 0: the head on host 0, one compute server on each other host (or slots[i] on host i).
    With launch, started the documented way: python -m dynexec.launch [mpirun options] -- [cluster options]."""

    def __init__(self, tmp, hosts, slots=None, launch=False, hide=False, extra=()):
        self.tmp, self.conn, self.archive = tmp, tmp / "cluster.json", tmp / "archive"
        self.server_file = self.conn.with_name("cluster.server.json")
        n = sum(slots.values()) if slots else len(hosts.names)
        start = ([sys.executable, "-m", "dynexec.launch", *hosts.mpirun_args(slots), "-n", str(n), "--"] if launch
                 else [MPIRUN, *hosts.mpirun_args(slots), "-n", str(n), sys.executable, "-m", "dynexec.cluster"])
        cmd = hosts.cmd(0, [*start, "--archive", str(self.archive), "--connection-file", str(self.conn), *extra],
                        hide=hide)
        Job.__init__(self, cmd, tmp / "cluster.log",
                     env={"OMPI_MCA_btl_tcp_if_include": SUBNET, "OMPI_MCA_oob_tcp_if_include": SUBNET})

    def records(self):
        """job id -> archive record, read with dynexec.read_archive."""
        return dynexec.read_archive(self.archive / f"{self.info['session']}.h5")


class Client:
    """A script run on a test host that talks in JSON lines: what it says (`said`), what it is told (`tell`);
    every wait bounded. Killed at teardown by the hosts' finalizer (it runs in one of their namespaces)."""

    def __init__(self, hosts, i, code, *args, cwd="/"):
        self.proc = subprocess.Popen(hosts.cmd(i, [sys.executable, "-c", code, *map(str, args)]), cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def said(self, timeout=60):
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            self.proc.kill()
            err = self.proc.stderr.read()
            raise AssertionError(f"the client said nothing for {timeout} s; stderr:\n{err}") from None

    def tell(self, what="go on"):
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout=30):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        assert code == 0, f"the client ended with {code}; stderr:\n{self.proc.stderr.read()}"


CLIENT = """
import json, socket, sys
import dynexec

names = sys.argv[2:]
resolved = []
for name in names:
    try:
        socket.getaddrinfo(name, None)
        resolved.append(name)
    except OSError:
        pass
with dynexec.Executor(connect=sys.argv[1]) as ex:
    servers = sorted(s["host"] for s in ex.servers())
    futures = [ex.submit(socket.gethostname) for _ in range(50)]
    ran_on = [f.result(timeout=60) for f in futures]
    ex.shutdown_cluster()
print(json.dumps({"me": socket.gethostname(), "resolved": resolved, "servers": servers, "ran_on": ran_on}))
"""


def test_fifty_jobs_on_servers_of_other_hosts_whose_names_resolve_nowhere(hosts, tmp_path):
    c = HostsCluster(tmp_path, hosts)
    try:
        c.wait_ready(60)
        port = c.info["endpoint"].rsplit(":", 1)[1]
        # Its ib0 address (which no other host reaches), its eth0 address, then its host name.
        assert c.info["endpoints"] == [f"tcp://{a}:{port}" for a in (SIDE.split("/")[0], hosts.addresses[0],
                                                                      hosts.names[0])]
        assert c.info["endpoint"] == c.info["endpoints"][0]
        assert c.server_info["endpoints"] == c.info["endpoints"]
        # The client on host 2 (where a server runs too): it cannot reach the head's first address either.
        p = subprocess.run(hosts.cmd(2, [sys.executable, "-c", CLIENT, str(c.conn), *hosts.names]),
                           capture_output=True, text=True, timeout=90)
        assert p.returncode == 0, p.stderr + "\n" + c.output()
        out = json.loads(p.stdout)
        assert out["me"] == hosts.names[2] and out["resolved"] == []
        assert out["servers"] == hosts.names[1:]
        assert len(out["ran_on"]) == 50 and set(out["ran_on"]) <= set(hosts.names[1:])
        assert c.wait_exit(30) == 0, c.output()
    finally:
        c.kill()


# The client: a batch of n short jobs, during which the test kills a server rank or cuts a server host's link;
# once told the link is back, it waits for a server on that host and runs a batch that must reach it.
FAULTS_CLIENT = """
import json, socket, sys, time
import dynexec

def where(i, seconds):
    time.sleep(seconds)
    return [i, socket.gethostname()]

def say(**what):
    print(json.dumps(what), flush=True)

cut_host, n = sys.argv[2], int(sys.argv[3])
with dynexec.Executor(connect=sys.argv[1]) as ex:
    say(servers=ex.servers())
    first = [ex.submit(where, i, 0.04) for i in range(n)]
    deadline = time.monotonic() + 60
    while sum(f.done() for f in first) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    say(done=sum(f.done() for f in first))  # the test kills and cuts now
    out = []
    for f in first:
        try:
            out.append(f.result(timeout=90))
        except BaseException as e:
            out.append(repr(e))
    say(first=out, ids=[f.job_id for f in first])
    sys.stdin.readline()  # the link is back
    deadline = time.monotonic() + 30
    while not any(s["host"] == cut_host for s in ex.servers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = [ex.submit(where, i, 0.04) for i in range(60)]
    out = [f.result(timeout=60) for f in second]
    say(servers=ex.servers(), second=out, ids=[f.job_id for f in second])
    ex.shutdown_cluster()
"""


def test_a_server_rank_killed_and_a_link_cut_mid_run_cost_only_their_jobs(four_hosts, tmp_path):
    hosts = four_hosts
    h0, h1, h2, h3 = hosts.names
    # The documented launch: the head on h0, two server ranks on h1, one on h2; the client on h3; no --advertise.
    c = HostsCluster(tmp_path, hosts, slots={0: 1, 1: 2, 2: 1}, launch=True)
    try:
        c.wait_ready(60)
        client = Client(hosts, 3, FAULTS_CLIENT, c.conn, h2, 300)
        servers = client.said()["servers"]
        assert sorted(s["host"] for s in servers) == [h1, h1, h2]
        victim = next(s for s in servers if s["host"] == h1)
        rank = int(Path(f"/proc/{victim['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert b"dynexec.cluster" in Path(f"/proc/{rank}/cmdline").read_bytes()  # the rank, not its server
        c.note([rank] + [s["pid"] for s in servers])
        assert client.said()["done"] >= 30
        os.kill(rank, signal.SIGKILL)  # a server rank lost
        hosts.switch_port(2, up=False)  # and h2's cable pulled, for three leases (2 s each)
        try:
            time.sleep(6)
        finally:
            hosts.switch_port(2, up=True)
        first = client.said(90)
        # Every job ok, none failed.
        assert [o[0] if isinstance(o, list) else o for o in first["first"]] == list(range(300))
        assert c.proc.poll() is None, "the cluster stopped:\n" + c.output()
        assert not alive(rank)
        client.tell("the link is back")
        second = client.said(60)  # a new batch: the cluster still serves
        assert [i for i, _ in second["second"]] == list(range(60))
        # h2's server (its lease expired during the cut; the head said so and it registered again: the same
        # process, a new registration) takes work; the killed rank's server is gone.
        cut = next(s for s in servers if s["host"] == h2)
        back = [s for s in second["servers"] if s["host"] == h2]
        assert [(s["pid"], s["id"] != cut["id"]) for s in back] == [(cut["pid"], True)], (cut, back)
        assert h2 in {host for _, host in second["second"]}
        assert victim["id"] not in {s["id"] for s in second["servers"]} and len(second["servers"]) == 2
        client.wait(30)
        assert c.wait_exit(40) == 0, c.output()
        records = c.records()
        ids = first["ids"] + second["ids"]
        assert sorted(records) == sorted(ids) and len(set(ids)) == 360  # each job archived once
        assert {r["status"] for r in records.values()} == {"ok"}
        assert any(r["attempts"] > 1 for r in records.values())  # the lost servers' jobs ran again elsewhere
    finally:
        c.kill()


def test_a_host_that_dies_costs_only_its_jobs_and_a_server_joining_from_it_later_takes_work(hosts, tmp_path):
    h0, h1, h2 = hosts.names
    c = HostsCluster(tmp_path, hosts, launch=True, extra=["--lease-seconds", "1"])
    joined = None
    try:
        c.wait_ready(60)
        client = Client(hosts, 0, FAULTS_CLIENT, c.conn, h2, 150)
        client.said()
        client.said()
        hosts.power_off(2)  # its server, its rank and Open MPI's daemon there are gone
        first = client.said(60)
        assert [o[0] if isinstance(o, list) else o for o in first["first"]] == list(range(150))
        assert c.proc.poll() is None, "the cluster stopped:\n" + c.output()
        # h2 boots again; a server started there by hand finds the head from the join file's endpoints.
        hosts.switch_port(2, up=True)
        joined = Job(hosts.cmd(2, [sys.executable, "-m", "dynexec.server", "--join", str(c.server_file)]),
                     tmp_path / "join.log")
        client.tell("h2 is back")
        second = client.said(60)
        assert [s["host"] for s in second["servers"]].count(h2) == 1
        assert h2 in {host for _, host in second["second"]}
        client.wait(30)
        assert c.wait_exit(40) == 0, c.output()
        assert joined.wait_exit(30) == 0, joined.output()  # told to stop with the cluster
        records = c.records()
        assert sorted(records) == sorted(first["ids"] + second["ids"])
        assert {r["status"] for r in records.values()} == {"ok"}
    finally:
        if joined is not None:
            joined.kill()
        c.kill()


def run_beside_hidden_modules(request, tmp, modules: dict, client: str, slots=None):
    """Runs `client` as a script on host 3 (argv[1]: the connection file), in a directory that holds
    `modules` (name -> source) and that the head's host 0 and the servers' hosts (1 and 2, or those of
    `slots`) do not have: there it is an empty tmpfs. The client must stop the cluster. Returns (hosts, its
    JSON output: its last line). E.g. a 50 MB global used by 20 jobs on hosts that lack its module."""
    mine = tmp / "mine"
    mine.mkdir()
    for name, text in modules.items():
        (mine / f"{name}.py").write_text(textwrap.dedent(text))
    (mine / "client.py").write_text(textwrap.dedent(client))
    hosts = make_hosts(request, tmp, 4, hidden=[mine])
    c = HostsCluster(tmp, hosts, slots=slots or {0: 1, 1: 1, 2: 1}, hide=True)
    try:
        c.wait_ready(60)
        p = subprocess.run(hosts.cmd(3, [sys.executable, str(mine / "client.py"), str(c.conn)]),
                           capture_output=True, text=True, timeout=90, cwd="/")
        assert p.returncode == 0, p.stderr + "\n" + c.output()
        assert c.wait_exit(30) == 0, c.output()
        return hosts, json.loads(p.stdout.splitlines()[-1])
    finally:
        c.kill()


def test_a_helper_module_beside_the_client_script_reaches_server_hosts_that_do_not_have_it(request, tmp_path):
    physics = """
        import os, socket
        def fn(i, here):
            return [i * i, socket.gethostname(), os.path.exists(here)]
        """
    client = """
        import json, os, socket, sys
        import dynexec
        import physics  # beside this script: sys.path[0] here; on the server hosts that directory is empty

        with dynexec.Executor(connect=sys.argv[1]) as ex:
            futures = [ex.submit(physics.fn, i, physics.__file__) for i in range(20)]
            out = [f.result(timeout=60) for f in futures]
            ex.shutdown_cluster()
        print(json.dumps({"me": socket.gethostname(), "mine": os.path.exists(physics.__file__), "out": out}))
        """
    hosts, out = run_beside_hidden_modules(request, tmp_path, {"physics": physics}, client)
    assert out["me"] == hosts.names[3] and out["mine"]
    assert [sq for sq, _, _ in out["out"]] == [i * i for i in range(20)]
    assert {host for _, host, _ in out["out"]} == set(hosts.names[1:3])  # both server hosts ran some
    assert not any(exists for _, _, exists in out["out"])  # where they ran, physics.py is not there


def test_a_link_cut_for_longer_than_the_head_timeout_its_rank_starts_a_server_that_registers_again(hosts, tmp_path):
    h0, h1, h2 = hosts.names
    c = HostsCluster(tmp_path, hosts, launch=True, extra=["--lease-seconds", "1", "--head-timeout", "2"])
    try:
        c.wait_ready(60)
        client = Client(hosts, 0, FAULTS_CLIENT, c.conn, h2, 100)
        servers = client.said()["servers"]
        cut = next(s for s in servers if s["host"] == h2)
        c.note(s["pid"] for s in servers)
        client.said()
        hosts.switch_port(2, up=False)  # for longer than the head timeout: h2's server leaves, its rank waits
        try:
            wait_for(lambda: not alive(cut["pid"]), 30, "h2's server to leave")
        finally:
            hosts.switch_port(2, up=True)
        first = client.said(60)
        assert [o[0] if isinstance(o, list) else o for o in first["first"]] == list(range(100))
        client.tell("the link is back")
        second = client.said(60)
        back = [s for s in second["servers"] if s["host"] == h2]
        assert len(back) == 1 and back[0]["pid"] != cut["pid"], (cut, back)  # a new server, from the same rank
        assert h2 in {host for _, host in second["second"]}
        client.wait(30)
        assert c.wait_exit(40) == 0, c.output()
        assert "no word from the head" in c.output() and "answers again" in c.output()
        records = c.records()
        assert sorted(records) == sorted(first["ids"] + second["ids"])
        assert {r["status"] for r in records.values()} == {"ok"}
    finally:
        c.kill()


def _link_bytes(hosts, i) -> tuple[int, int]:
    """(received, sent) bytes of host i's link to the switch since it was made."""
    out = subprocess.run(["ip", "-n", hosts.namespaces[i], "-s", "-j", "link", "show", "eth0"], check=True,
                         capture_output=True, text=True, timeout=10).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


def test_a_50_mb_global_and_a_50_mb_scattered_array_used_by_20_jobs_each_cross_each_link_once(request, tmp_path):
    data = """
        import os, socket
        import numpy as np
        BIG = np.full(50 * 2**20 // 8, 2.0)  # a module global: it travels with the function that uses it
        def fn(i):
            return [float(BIG[i]) * i, socket.gethostname()]
        def total(a, i):
            return [float(a[i]), socket.gethostname()]
        """
    client = """
        import json, socket, sys
        import numpy as np
        import dynexec
        import data  # beside this script only

        with dynexec.Executor(connect=sys.argv[1]) as ex:
            a = [f.result(timeout=120) for f in [ex.submit(data.fn, i) for i in range(20)]]
            h = ex.scatter(np.full(50 * 2**20 // 8, 3.0))
            b = [f.result(timeout=120) for f in [ex.submit(data.total, h, i) for i in range(20)]]
            ex.shutdown_cluster()
        print(json.dumps({"a": a, "b": b}))
        """
    hosts, out = run_beside_hidden_modules(request, tmp_path, {"data": data}, client)
    assert [v for v, _ in out["a"]] == [2.0 * i for i in range(20)]
    assert [v for v, _ in out["b"]] == [3.0] * 20
    assert {host for _, host in out["a"] + out["b"]} == set(hosts.names[1:3])
    mb = 2**20
    sent_by_client = _link_bytes(hosts, 3)[1]
    # Each 50 MB object once from the client (20 jobs each would be 2 GB), and once to each server host.
    assert sent_by_client < 160 * mb, f"the client sent {sent_by_client / mb:.0f} MB"
    for i in (1, 2):
        received = _link_bytes(hosts, i)[0]
        assert received < 160 * mb, f"{hosts.names[i]} received {received / mb:.0f} MB"
