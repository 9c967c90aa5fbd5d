"""The comparison benchmark is not a test; this only shows that it runs and writes its outputs."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None,
                    reason="needs mpirun and mpi4py (Debian: openmpi-bin, python3-mpi4py)")
def test_compare_cluster_rows(tmp_path):
    cmd = [sys.executable, str(BENCH), "--quick", "--only", "tiny,cluster", "--peers", "dynexec,processpool,mpi4py",
           "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "compare.json").read_text())
    tiny, cluster = results["workloads"]["tiny"]["dynexec"], results["workloads"]["cluster"]
    assert tiny["function"].startswith("inc_main") and tiny["importable_jobs_per_s"] > 0
    assert tiny["main_over_importable"] == tiny["jobs_per_s"] / tiny["importable_jobs_per_s"]
    for peer in ("dynexec", "mpi4py"):
        assert cluster[peer]["status"] == "ok", (peer, cluster[peer], out.stdout)
        assert cluster[peer]["jobs_per_s"] > 0 and cluster[peer]["map_chunksize_1_items_per_s"] > 0
    assert cluster["processpool"]["status"] == "n/a"
    rows = {(r["workload"], r["metric"]) for r in results["targets"]}
    assert ("cluster", "dynexec client / local Executor, tiny jobs/s") in rows
    assert ("tiny", "dynexec: __main__ / importable") in rows
    assert "cluster" in out.stdout and "__main__ / importable" in out.stdout


def test_objects_benchmark_runs_and_sends_the_global_once_per_server():
    bench = BENCH.with_name("objects.py")
    out = subprocess.run([sys.executable, str(bench), "--mb", "4", "--jobs", "6"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 MB object, 6 jobs, 2 servers" in out.stdout
    sent = int(out.stdout.split("sent the global ")[1].split()[0])
    assert 1 <= sent <= 2, out.stdout
    for row in ("dynexec, a global", "dynexec, scatter", "dynexec, objects off", "ProcessPoolExecutor"):
        assert row in out.stdout
