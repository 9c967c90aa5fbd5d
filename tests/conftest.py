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


@pytest.fixture
def build_plugin(tmp_path):
    """Compiles a service plugin from C++ source, as a user would (g++ with dynexec.get_include());
    returns the library's path."""

    def build(name: str, source: str):
        src, lib = tmp_path / f"{name}.cpp", tmp_path / f"lib{name}.so"
        src.write_text(textwrap.dedent(source))
        subprocess.run(["g++", "-O1", "-std=c++20", "-shared", "-fPIC", f"-I{dynexec.get_include()}", str(src), "-o",
                        str(lib)], check=True, timeout=120)
        return lib

    return build


def pytest_configure(config):
    # Never write into the user's real default archive from tests.
    os.environ.setdefault("DYNEXEC_ARCHIVE", str(config.rootpath / "build" / "test-archive"))
