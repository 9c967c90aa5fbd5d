"""Native services added at run time from a shared library."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dynexec

PLUGIN = os.environ.get("DYNEXEC_EXAMPLE_PLUGIN")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not PLUGIN, reason="DYNEXEC_EXAMPLE_PLUGIN is not set (make test sets it)")
def test_example_plugin_built_by_cmake(executor, run_python):
    # In a fresh process: a plugin is loaded once per process.
    out = run_python(f"""
        import numpy as np, dynexec
        print(dynexec.load_services({PLUGIN!r}))
        with dynexec.Executor(max_workers=2, archive=False) as ex:
            print(round(ex.submit_service("example.integrate", a=0.0, b=float(np.pi)).result(timeout=30), 6))
            print(ex.submit_service("example.histogram", a=np.array([0.0, 0.1, 0.2, 1.0]), bins=2).result(timeout=30).tolist())
    """)
    assert out.splitlines() == ["['example.integrate', 'example.histogram']", "2.0", "[3, 1]"]


def test_plugin_built_by_hand_with_get_include(tmp_path, run_python):
    src = tmp_path / "cube.cpp"
    src.write_text("""
        #include <dynexec/service.hpp>
        DYNEXEC_SERVICES(r) {
            r.add({"test.cube", "x cubed", {{"x", dynexec::ValueType::real}},
                   [](const dynexec::Params& p) -> dynexec::Value { double x = p.get<double>("x"); return x * x * x; }});
        }
    """)
    lib = tmp_path / "libcube.so"
    subprocess.run(["g++", "-O1", "-std=c++20", "-shared", "-fPIC", f"-I{dynexec.get_include()}", str(src), "-o", str(lib)],
                   check=True, timeout=120)
    out = run_python(f"""
        import dynexec
        with dynexec.Executor(max_workers=1, archive=False) as ex:
            assert "test.cube" not in ex.servers()[0]["services"]
            dynexec.load_services({str(lib)!r})  # servers already running offer it from now on
            print(ex.submit_service("test.cube", x=3).result(timeout=30))
    """)
    assert out.strip() == "27.0"


def test_loading_something_that_is_not_a_plugin(tmp_path):
    with pytest.raises(ValueError, match="dynexec_register_services"):
        dynexec.load_services("/lib/x86_64-linux-gnu/libm.so.6")
    with pytest.raises(ValueError, match="no-such-plugin.so"):
        dynexec.load_services(tmp_path / "no-such-plugin.so")
