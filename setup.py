"""Builds the C++ core with CMake (in ./build, shared with `make`) and ships it in the package."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = Path(os.environ.get("DYNEXEC_BUILD_DIR", ROOT / "build"))
        if not (build / "CMakeCache.txt").exists():
            subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["cmake", "--build", str(build), "--target", "_core", "-j", str(os.cpu_count() or 2)])
        built = next(build.glob("_core*.so"))
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
        # The plugin API headers, for dynexec.get_include().
        include = target.parent / "include"
        shutil.rmtree(include, ignore_errors=True)
        shutil.copytree(ROOT / "cpp" / "include", include)


setup(ext_modules=[CMakeExtension("dynexec._core")], cmdclass={"build_ext": CMakeBuild})
