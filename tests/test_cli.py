"""The dynexec command, run as a user runs it (`python -m dynexec ...` in a subprocess): locally, and against
one real cluster started with `python -m dynexec.launch -n 3` (shared by this module's cluster tests)."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from test_cluster import MPI_ENV, MPIRUN, Cluster, alive, wait_for  # noqa: F401
import test_cluster

pytestmark = pytest.mark.timeout(120)


def dx(*args, timeout=60, env=None, cwd=None):
    """Runs `python -m dynexec ARGS`; returns the CompletedProcess (text)."""
    e = {**os.environ, **MPI_ENV, **(env or {})}
    e.pop("DYNEXEC_CONNECT", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "dynexec", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd, stdin=subprocess.DEVNULL)


def ok(proc, code=0):
    assert proc.returncode == code, \
        f"exit {proc.returncode}, wanted {code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def jobs(proc):
    return json.loads(proc.stdout)["jobs"]


# -- locally ------------------------------------------------------------------------------------------

def test_help_and_usage_errors():
    out = ok(dx("--help")).stdout
    for sub in ("submit", "status", "ls", "show", "cancel", "stop", "cluster", "server", "launch"):
        assert sub in out
    assert "Exit codes" in out
    assert "--connection-file" in ok(dx("cluster", "--help")).stdout  # today's modules, their own options
    assert "--join" in ok(dx("server", "--help")).stdout
    assert "mpirun" in ok(dx("launch", "--help")).stdout
    assert "implied" in ok(dx("submit", "--help")).stdout
    ok(dx("submit", "--array", "5-1", "noop"), 2)
    ok(dx("submit"), 2)
    ok(dx("frobnicate"), 2)
    ok(dx("status"), 2)  # no cluster named
    assert "DYNEXEC_CONNECT" in dx("status").stderr


def test_local_service_callable_and_show(tmp_path):
    archive = tmp_path / "archive"
    r = jobs(ok(dx("submit", "--archive", archive, "--json", "pi.monte_carlo", "samples=20000", "seed=7")))
    assert len(r) == 1 and r[0]["status"] == "ok" and 3.0 < r[0]["value"] < 3.3
    job = r[0]["job_id"]
    shown = json.loads(ok(dx("show", job, "--archive", archive, "--json")).stdout)
    assert (shown["job_id"], shown["status"], shown["service"], shown["value"]) == (job, "ok", "pi.monte_carlo",
                                                                                     r[0]["value"])
    assert shown["end_time"] >= shown["start_time"] >= shown["submit_time"] > 0
    text = ok(dx("show", job, "--archive", archive)).stdout
    assert "pi.monte_carlo" in text and "status:" in text
    # A Python callable by module:function, positional and keyword arguments as JSON scalars.
    r = jobs(ok(dx("submit", "--archive", archive, "--json", "math:comb", "5", "2")))
    assert r[0]["value"] == 10
    r = jobs(ok(dx("submit", "--archive", archive, "--json", "json:dumps", "x", "indent=2")))
    assert r[0]["value"] == '"x"'
    line = ok(dx("submit", "--archive", archive, "--local", "math:comb", "5", "2",
                 env={"DYNEXEC_CONNECT": str(tmp_path / "no-cluster.json")})).stdout.split("\t")
    assert line[1:] == ["ok", "10\n"]
    ok(dx("show", "01AAAAAAAAAAAAAA-0000000001", "--archive", archive), 3)
    ok(dx("submit", "--archive", archive, "no_such_module_here:f"), 3)
    ok(dx("submit", "--archive", archive, "no.such.service"), 3)
    ok(dx("submit", "--archive", archive, "pi.monte_carlo", "samples=lots"), 2)


def test_local_command_array_and_exit_codes(tmp_path):
    archive = tmp_path / "archive"
    r = jobs(ok(dx("submit", "--archive", archive, "--json", "--array", "1-5", "--",
                   "sh", "-c", 'echo "$DYNEXEC_ARRAY_INDEX {index}"')))
    assert [j["index"] for j in r] == [1, 2, 3, 4, 5]
    assert [j["stdout"] for j in r] == [f"{i} {i}\n" for i in range(1, 6)]
    assert all(j["status"] == "ok" and j["value"] == 0 for j in r)
    r = jobs(ok(dx("submit", "--archive", archive, "--json", "--array", "1-10:4,2", "noop", "x={index}")))
    assert [j["value"] for j in r] == [j["index"] for j in r] == [1, 5, 9, 2]
    # Text output: the command's own output, then its job's line.
    p = ok(dx("submit", "--archive", archive, "--env", "GREETING=hi", "--", "sh", "-c", "echo $GREETING"))
    assert p.stdout.splitlines()[0] == "hi" and p.stdout.splitlines()[1].endswith("\tok")
    # A failing command: exit 1, its exit code as the value, CommandError.
    p = ok(dx("submit", "--archive", archive, "--json", "--", "sh", "-c", "echo oops >&2; exit 4"), 1)
    (j,) = jobs(p)
    assert (j["status"], j["value"], j["error_type"], j["stderr"]) == ("error", 4, "CommandError", "oops\n")
    ok(dx("show", j["job_id"], "--archive", archive), 1)
    (t,) = jobs(ok(dx("submit", "--archive", archive, "--json", "--time-limit", "0.5", "--", "sleep", "30"), 1))
    assert t["status"] == "timeout"
    listing = json.loads(ok(dx("ls", "--archive", archive, "--status", "error", "--json")).stdout)
    failed = [x["job_id"] for s in listing["sessions"] for x in s["jobs"]]
    assert failed == [j["job_id"]]
    everything = json.loads(ok(dx("ls", "--archive", archive, "--json")).stdout)
    assert sum(len(s["jobs"]) for s in everything["sessions"]) == 5 + 4 + 1 + 1 + 1
    assert j["job_id"] in ok(dx("ls", "--archive", archive)).stdout


# -- against a cluster ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if MPIRUN is None:
        pytest.skip("mpirun is not on PATH (Debian: apt install openmpi-bin)")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not importable (Debian: apt install python3-mpi4py)")
    c = Cluster(tmp_path_factory.mktemp("cli"), 3, ["--lease-seconds", "2"], "cluster", launch=True)
    try:
        yield c.wait_ready()
    finally:
        c.kill()


def _show(cluster, job_id):
    return json.loads(dx("show", job_id, "--connect", cluster.conn, "--json").stdout or "null")


def test_cluster_status(cluster):
    st = json.loads(ok(dx("status", "--connect", cluster.conn, "--json")).stdout)
    assert len(st["servers"]) == 2  # ranks 1 and 2; rank 0 is the head
    assert all(s["lease_expiry"] > 0 and "command" in s["services"] for s in st["servers"])
    text = ok(dx("status", env={"DYNEXEC_CONNECT": str(cluster.conn)})).stdout
    assert "2 server(s)" in text and "LEASE" in text


def test_cluster_submit_waits_for_service_and_callable(cluster):
    r = jobs(ok(dx("submit", "--connect", cluster.conn, "--wait", "--json", "--array", "1-3", "pi.monte_carlo",
                   "samples=10000", "seed={index}")))
    assert [j["status"] for j in r] == ["ok"] * 3 and len({j["value"] for j in r}) > 1
    # A module of the current directory, which the servers cannot import: it is shipped by value.
    (cluster.tmp / "cli_jobs.py").write_text("def triple(x, plus=0):\n    return 3 * x + plus\n")
    r = jobs(ok(dx("submit", "--connect", cluster.conn, "--wait", "--json", "cli_jobs:triple", "7", "plus=1",
                   cwd=cluster.tmp)))
    assert r[0]["value"] == 22
    p = ok(dx("submit", "--connect", cluster.conn, "--wait", "--", "sh", "-c", "exit 5"), 1)
    assert "CommandError" in p.stdout and "exited with code 5" in p.stdout


def test_detached_submission_runs_and_is_archived_after_the_client_exits(cluster):
    t0 = time.monotonic()
    p = ok(dx("submit", "--connect", cluster.conn, "--", "sh", "-c", "sleep 1; echo detached"))
    assert time.monotonic() - t0 < 30
    (job_id,) = p.stdout.split()
    shown = wait_for(lambda: (lambda s: s if s and s.get("status") else None)(_show(cluster, job_id)), 60,
                     f"the archived result of {job_id}", interval=0.2)
    assert (shown["status"], shown["stdout"], shown["value"]) == ("ok", "detached\n", 0)


def test_cancel_kills_a_command_submitted_by_another_process(cluster):
    pidfile = cluster.tmp / "long.pid"
    (job_id,) = ok(dx("submit", "--connect", cluster.conn, "--", "sh", "-c",
                      f"sleep 120 & echo $! > {pidfile}; wait")).stdout.split()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the long command to start")
    sleeper = int(pidfile.read_text())
    c = json.loads(ok(dx("cancel", job_id, "--connect", cluster.conn, "--json")).stdout)
    assert c == {job_id: "killed"}
    wait_for(lambda: not alive(sleeper), 15, f"the killed command's grandchild {sleeper} to end")
    shown = wait_for(lambda: (lambda s: s if s and s.get("status") else None)(_show(cluster, job_id)), 30,
                     f"the archived result of {job_id}", interval=0.2)
    assert shown["status"] == "killed"
    ok(dx("cancel", job_id, "--connect", cluster.conn), 3)  # done already


def test_ls_of_the_clusters_archive(cluster):
    listing = json.loads(ok(dx("ls", "--connect", cluster.conn, "--json")).stdout)
    assert listing["archive"] == str(cluster.archive)
    statuses = {j["status"] for s in listing["sessions"] for j in s["jobs"]}
    assert {"ok", "error"} <= statuses


def test_stop_ends_the_cluster(cluster):  # last: the module's cluster is gone after it
    ok(dx("stop", "--connect", cluster.conn))
    assert cluster.wait_exit(60) == 0
    ok(dx("status", "--connect", cluster.conn), 3)


assert test_cluster  # imported for its Cluster helper and the job functions the servers import
