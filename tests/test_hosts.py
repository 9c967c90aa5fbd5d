"""A cluster over three test hosts (network namespaces, tests/hosts.py) whose host names resolve nowhere:
the head advertises its interface addresses and servers and clients take one they reach."""
import json
import subprocess
import sys

from hosts import SIDE, SUBNET, hosts  # noqa: F401 (the fixture)
from test_cluster import MPIRUN, Cluster, Job, pytestmark  # noqa: F401 (the same skips and time limit)


class HostsCluster(Cluster):
    """mpirun on host 0, one rank per host: the head on host 0, a compute server on each other host."""

    def __init__(self, tmp, hosts):
        self.tmp, self.conn, self.archive = tmp, tmp / "cluster.json", tmp / "archive"
        self.server_file = self.conn.with_name("cluster.server.json")
        cmd = hosts.cmd(0, [MPIRUN, *hosts.mpirun_args(), "-n", "3", sys.executable, "-m", "dynexec.cluster",
                            "--archive", str(self.archive), "--connection-file", str(self.conn)])
        Job.__init__(self, cmd, tmp / "cluster.log",
                     env={"OMPI_MCA_btl_tcp_if_include": SUBNET, "OMPI_MCA_oob_tcp_if_include": SUBNET})


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
