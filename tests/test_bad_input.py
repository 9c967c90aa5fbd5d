"""Bad input gets a clear error naming what was wrong, and disturbs nothing else."""
import threading

import pytest

import dynexec


def add(a, b):
    return a + b


def still_works(ex):
    assert ex.submit(add, 1, 2).result(timeout=10) == 3


def test_unpicklable_callable(executor):
    lock = threading.Lock()
    with pytest.raises(dynexec.InvalidJobError, match="cannot be pickled"):
        executor.submit(lambda: lock)
    with pytest.raises(TypeError, match="not callable"):
        executor.submit(42)
    still_works(executor)


def test_unknown_service(executor):
    with pytest.raises(dynexec.UnknownServiceError, match="'pi.monte'.*pi.monte_carlo"):
        executor.submit_service("pi.monte", samples=10)
    still_works(executor)


def test_wrong_parameter_type_and_name(executor):
    with pytest.raises(dynexec.InvalidJobError, match="'samples' must be int, not str"):
        executor.submit_service("pi.monte_carlo", samples="many")
    with pytest.raises(dynexec.InvalidJobError, match="no parameter 'sample'.*samples"):
        executor.submit_service("pi.monte_carlo", sample=10)
    with pytest.raises(dynexec.InvalidJobError, match="needs parameter 'spot'"):
        executor.submit_service("option.black_scholes", strike=1.0)
    with pytest.raises(TypeError, match="parameter 'a': cannot pass a list"):
        executor.submit_service("array.sum", a=[1, 2, 3])
    still_works(executor)


def test_service_that_rejects_its_input_fails_only_that_job(executor):
    f = executor.submit_service("pi.monte_carlo", samples=-5)
    with pytest.raises(ValueError, match="pi.monte_carlo: samples must be positive"):
        f.result(timeout=10)
    still_works(executor)


def test_function_that_raises(executor, archive):
    def fail():
        raise ZeroDivisionError("no")

    f = executor.submit(fail)
    with pytest.raises(ZeroDivisionError):
        f.result(timeout=10)
    still_works(executor)
    executor.shutdown()
    r = dynexec.find(f.job_id, archive)
    assert r.status == "error" and r.error_type == "ZeroDivisionError" and "in fail" in r.traceback
    assert isinstance(r.exception(), ZeroDivisionError)


def test_archive_path_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(dynexec.ArchiveError, match=str(blocker / "archive")):
        dynexec.Executor(max_workers=1, archive=blocker / "archive")
    with pytest.raises(OSError):  # ArchiveError is an OSError
        dynexec.Executor(max_workers=1, archive="/proc/dynexec/archive")


def test_finder_errors(archive, executor):
    with pytest.raises(dynexec.InvalidJobError, match="not a dynexec job ID"):
        dynexec.find("nonsense", archive)
    missing = executor.session + "-9999999999"
    with pytest.raises(dynexec.ResultNotFoundError, match=missing):
        dynexec.find(missing, archive)


def test_submit_after_shutdown(archive):
    ex = dynexec.Executor(max_workers=1, archive=archive)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(add, 1, 2)


def test_server_processes_that_cannot_start_fail_fast(monkeypatch, archive):
    import sys
    import time
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every server process exits at once
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="only 0 of 2 compute-server processes registered; exited"):
        dynexec.Executor(max_workers=2, archive=archive)
    assert time.monotonic() - t < 10
