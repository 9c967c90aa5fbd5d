"""The benchmark is not a test; this only shows it still runs."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"


def test_throughput_benchmark_runs():
    out = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ProcessPoolExecutor python tiny" in out.stdout and "dynexec native noop" in out.stdout
