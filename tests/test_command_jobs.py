"""Command jobs: Executor.submit_command(argv, env=, cwd=), the built-in service "command"."""
import time
from pathlib import Path

import pytest

import dynexec

pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _wait_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written within {timeout} s")


def test_success_archives_output_and_value_zero(executor, tmp_path):
    f = executor.submit_command(["sh", "-c", 'echo "out $X"; pwd; echo err >&2'], env={"X": "from env"},
                                cwd=tmp_path)
    assert f.result(30) == 0
    assert f.stdout == f"out from env\n{tmp_path}\n"
    assert f.stderr == "err\n"
    r = executor.find(f.job_id)
    assert (r.status, r.service, r.value, r.stdout, r.stderr) == ("ok", "command", 0, f.stdout, "err\n")


def test_environment_is_merged_over_the_servers(executor):
    f = executor.submit_command(["sh", "-c", 'echo "$ONE:${PATH:+has-path}"'], env={"ONE": "1"})
    assert f.result(30) == 0 and f.stdout == "1:has-path\n"


def test_non_zero_exit_is_a_command_error(executor):
    f = executor.submit_command(["sh", "-c", "echo partial; exit 3"])
    with pytest.raises(dynexec.CommandError, match="exited with code 3") as info:
        f.result(30)
    assert info.value.returncode == 3
    assert "sh -c" in str(info.value)
    assert f.stdout == "partial\n"
    r = executor.find(f.job_id)
    assert (r.status, r.error_type, r.value) == ("error", "CommandError", 3)
    assert isinstance(r.exception(), dynexec.CommandError) and r.exception().returncode == 3


def test_signal_and_missing_program(executor):
    f = executor.submit_command(["sh", "-c", "kill -9 $$"])
    with pytest.raises(dynexec.CommandError, match=r"signal 9 \(SIGKILL\)") as info:
        f.result(30)
    assert info.value.returncode == -9
    g = executor.submit_command(["dynexec-no-such-program-here"])
    with pytest.raises(dynexec.CommandError, match="cannot run dynexec-no-such-program-here"):
        g.result(30)


def test_bad_argv_is_refused_before_submitting(executor):
    with pytest.raises(TypeError, match="list of arguments"):
        executor.submit_command("echo hi")
    with pytest.raises(ValueError, match="must name a program"):
        executor.submit_command([])
    with pytest.raises(ValueError, match="NUL"):
        executor.submit_command(["echo", "a\0b"])
    with pytest.raises(ValueError, match="environment variable name"):
        executor.submit_command(["true"], env={"A=B": "x"})


@pytest.mark.parametrize("how", ["time_limit", "kill"])
def test_time_limit_and_kill_end_the_whole_process_group(executor, tmp_path, how):
    pidfile = tmp_path / "grandchild.pid"
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]  # the sleep is a grandchild of the job
    if how == "time_limit":
        f = executor.options(time_limit=1.0).submit_command(argv)
    else:
        f = executor.submit_command(argv)
    pid = int(_wait_file(pidfile))
    if how == "kill":
        assert f.kill()
    with pytest.raises(dynexec.JobTimeoutError if how == "time_limit" else dynexec.JobKilledError):
        f.result(30)
    assert _wait_gone(pid), f"the command's grandchild {pid} outlived the job"
    assert executor.find(f.job_id).status == ("timeout" if how == "time_limit" else "killed")


def test_in_process_servers_run_commands_too(tmp_path):
    with dynexec.Executor(1, archive=tmp_path / "a", processes=False) as ex:
        assert ex.submit_command(["true"]).result(30) == 0
        with pytest.raises(dynexec.CommandError):
            ex.submit_command(["false"]).result(30)


def test_command_is_a_builtin_service():
    params = {p["name"]: p for p in dynexec.services()["command"]["params"]}
    assert params["argv"]["required"] and params["argv"]["type"] == "bytes"
    assert not params["env"]["required"] and not params["cwd"]["required"]
