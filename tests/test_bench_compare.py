"""The comparison benchmark is not a test; this only shows that it runs and writes its outputs."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "compare.py"


def test_compare_benchmark_runs(tmp_path):
    cmd = [sys.executable, str(BENCH), "--quick", "--peers", "dynexec,processpool", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "compare.json").read_text())
    tiny = results["workloads"]["tiny"]
    for peer in ("dynexec", "processpool"):
        assert tiny[peer]["status"] == "ok", (peer, tiny[peer], out.stdout)
        assert tiny[peer]["jobs_per_s"] > 0
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert not list(tmp_path.glob("compare-tmp-*")), "scratch files left behind"
