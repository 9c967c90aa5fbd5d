"""Test hosts made of Linux network namespaces (root only): the `hosts` fixture.

Each host is a network namespace `dx-<pid>-<i>` with lo up and a host name of its own that nothing resolves
(set in a fresh UTS namespace by whatever runs there). Their eth0 links go to a bridge in one more namespace,
`dx-<pid>-sw`, in the private subnet 10.213.1.0/24, which exists only there (no route out, no default
route): nothing leaves these namespaces. Host 0 also has ib0, first among its interfaces, in 10.213.2.0/24,
which no other host reaches: the first address it advertises is one the others cannot use.

mpirun runs on host 0 and starts its daemons on the others through an rsh agent script that enters the
namespace of the host name it is given (Hosts.mpirun_args). Directories given as `hidden` do not exist on
the hosts mpirun starts daemons on (nor in `cmd(..., hide=True)`): there they are covered by an empty tmpfs
in a mount namespace of their own (util-linux unshare makes its mounts private: nothing shows outside).
Teardown kills every process still in the namespaces (all of them ours) and deletes the namespaces, which
deletes their links; also when the test failed.
"""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

SUBNET = "10.213.1.0/24"  # the hosts' shared link: what Open MPI may use
SIDE = "10.213.2.1/24"  # host 0's link that leads nowhere


def _ip(*args, timeout=10):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=timeout)


class Hosts:
    def __init__(self, n: int, tmp: Path, hidden=()):
        pid = os.getpid()
        self.hidden = [str(d) for d in hidden]
        self.namespaces = [f"dx-{pid}-{i}" for i in range(n)]
        self.names = [f"dx{pid}h{i}" for i in range(n)]  # host names: no /etc/hosts line, no DNS here
        self.addresses = {}  # host -> its address on the shared link
        self.made = []
        self.tmp = tmp

    def make(self):
        self.switch = switch = self.namespaces[0].rsplit("-", 1)[0] + "-sw"
        for ns in self.namespaces + [switch]:
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "name", "dxbr", "type", "bridge")
        _ip("-n", switch, "link", "set", "dxbr", "up")
        # Made in the namespaces themselves, so that no interface ever appears outside them.
        _ip("-n", self.namespaces[0], "link", "add", "name", "ib0", "type", "veth", "peer", "name", "ib0end")
        _ip("-n", self.namespaces[0], "addr", "add", SIDE, "dev", "ib0")
        for dev in ("ib0", "ib0end"):
            _ip("-n", self.namespaces[0], "link", "set", dev, "up")
        for i, ns in enumerate(self.namespaces):
            _ip("-n", switch, "link", "add", "name", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", switch, "link", "set", f"port{i}", "master", "dxbr", "up")
            self.addresses[i] = SUBNET.replace(".0/24", f".{i + 1}")
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        self.agent = self.tmp / "rsh-agent"
        cases = "".join(f"  {h}) ns={ns};;\n" for h, ns in zip(self.names, self.namespaces))
        # mpirun calls `agent HOST COMMAND-LINE...` as it would call ssh: run the command line on that host.
        self.agent.write_text("#!/bin/sh\nhost=$1; shift\ncase $host in\n" + cases +
                              '  *) echo "rsh-agent: no test host $host" >&2; exit 1;;\nesac\n'
                              f'exec ip netns exec "$ns" unshare --uts {self._unshare()} sh -c '
                              f'"{self._hide()}hostname $host && $*"\n')
        self.agent.chmod(0o755)
        return self

    def switch_port(self, i: int, up: bool):
        """Host i's cable plugged in or pulled: its port on the bridge up or down (host i sees no carrier)."""
        _ip("-n", self.switch, "link", "set", f"port{i}", "up" if up else "down")

    def _unshare(self) -> str:
        return "--mount" if self.hidden else ""

    def _hide(self) -> str:  # shell commands that cover each hidden directory
        return "".join(f"mount -t tmpfs dxhidden '{d}' && " for d in self.hidden)

    def cmd(self, i: int, argv: list[str], hide=False) -> list[str]:
        """argv run on host i: in its network namespace, under its host name (with hide: without the hidden
        directories)."""
        flags = ["--uts", "--mount"] if hide and self.hidden else ["--uts"]
        return ["ip", "netns", "exec", self.namespaces[i], "unshare", *flags, "sh", "-c",
                (self._hide() if hide else "") + 'hostname "$0" && exec "$@"', self.names[i], *argv]

    def mpirun_args(self, slots=None) -> list[str]:
        """mpirun options for one rank per host (or slots[i] on host i, for each i in `slots`, in a hostfile
        as the README shows), rank 0 on host 0 (where mpirun itself runs)."""
        if slots is None:
            where = ["--host", ",".join(self.names)]
        else:
            hostfile = self.tmp / "hostfile"
            hostfile.write_text("".join(f"{self.names[i]} slots={k}\n" for i, k in slots.items()))
            where = ["--hostfile", str(hostfile)]
        return [*where, "--mca", "plm_rsh_agent", str(self.agent),
                "--mca", "plm_rsh_no_tree_spawn", "1", "--mca", "oob_tcp_if_include", SUBNET,
                "--mca", "btl_tcp_if_include", SUBNET, "--mca", "btl", "self,tcp"]

    def power_off(self, i: int):
        """Host i dies: every process on it (its Open MPI daemon too) killed, its cable pulled."""
        _kill_all(self.namespaces[i])
        self.switch_port(i, up=False)

    def remove(self):
        for ns in self.made:
            _kill_all(ns)  # what runs there (only our processes can), then the namespace
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.made = []


def _kill_all(ns: str):
    for _ in range(50):
        try:
            pids = [int(p) for p in _ip("netns", "pids", ns).stdout.split()]
        except subprocess.SubprocessError:
            return
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def why_no_namespaces() -> str:
    if os.geteuid() != 0:
        return "network namespaces for test hosts need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "the test hosts need `ip` (iproute2) and `unshare` (util-linux)"
    probe = f"dx-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as e:
        return f"cannot make a network namespace here: {getattr(e, 'stderr', '') or e}".strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return ""


def make_hosts(request, tmp, n: int, hidden=()) -> Hosts:
    """n test hosts, removed after the test whatever its outcome (skips where namespaces cannot be made)."""
    why = why_no_namespaces()
    if why:
        pytest.skip(why)
    h = Hosts(n, tmp, hidden)
    request.addfinalizer(h.remove)  # before make(): a failure half-way still removes what was made
    return h.make()


@pytest.fixture
def hosts(tmp_path, request):
    """Three test hosts (Hosts), removed after the test whatever its outcome."""
    return make_hosts(request, tmp_path, 3)


@pytest.fixture
def four_hosts(tmp_path, request):
    """Four test hosts: the head on host 0, servers on 1 and 2, a client on 3."""
    return make_hosts(request, tmp_path, 4)
