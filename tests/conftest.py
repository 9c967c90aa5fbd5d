import os
import subprocess
import sys
import textwrap

import pytest

import dynexec


@pytest.fixture
def archive(tmp_path):
    return tmp_path / "archive"


@pytest.fixture
def executor(archive):
    with dynexec.Executor(max_workers=2, archive=archive) as ex:
        yield ex


@pytest.fixture
def run_python():
    """Runs a script in a fresh interpreter (a 'later process'); returns its stdout."""

    def run(code, timeout=60):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return run


def pytest_configure(config):
    # Never write into the user's real default archive from tests.
    os.environ.setdefault("DYNEXEC_ARCHIVE", str(config.rootpath / "build" / "test-archive"))
