"""Load a native service plugin at run time and call its services by name.

The plugin is examples/native_service/example_service.cpp, built by the project's CMake
(`make build` puts it in build/examples/native_service/). Build your own the same way, or:
    g++ -O2 -std=c++20 -shared -fPIC -I"$(python -c 'import dynexec; print(dynexec.get_include())')" \
        my_service.cpp -ltbb -o libmy_service.so
"""
import sys
from pathlib import Path

import numpy as np

import dynexec

plugin = Path(sys.argv[1] if len(sys.argv) > 1 else "build/examples/native_service/libdynexec_example_service.so")
print("loaded:", dynexec.load_services(plugin.resolve()))

with dynexec.Executor(archive="dynexec-archive") as ex:
    area = ex.submit_service("example.integrate", a=0.0, b=np.pi)
    hist = ex.submit_service("example.histogram", a=np.random.default_rng(0).normal(size=100_000), bins=8)
    print(f"integral of sin over [0, pi] = {area.result():.6f}")
    print("histogram:", hist.result())
