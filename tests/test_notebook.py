"""The example notebook and Jupyter's interrupt, on a real ipykernel (issue 13, point 2): examples/sweep.ipynb
runs with nbclient and shows the Executor, a future and a result as HTML, a progress bar, a DataFrame and a
plot; an interrupt during a wait with a progress bar closes the bar and leaves the executor usable."""
import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

import dynexec

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client import KernelManager  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

pytestmark = pytest.mark.timeout(180)

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "sweep.ipynb"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernelspec "dynexec" in tmp_path running this interpreter on the dynexec under test; Jupyter's and
    IPython's own files go to tmp_path too, never to the user's ~/.local/share/jupyter or ~/.ipython."""
    for var, sub in (("JUPYTER_PATH", "share"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("DYNEXEC_ARCHIVE", str(tmp_path / "archive"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger on frozen modules
    spec = tmp_path / "share" / "kernels" / "dynexec"
    spec.mkdir(parents=True)
    package_root = str(Path(dynexec.__file__).resolve().parents[1])
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dynexec (test)", "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}}))
    made = []

    def start(nb):
        km = KernelManager(kernel_name="dynexec", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
        client = nbclient.NotebookClient(nb, km=km, timeout=120, allow_errors=True,
                                         resources={"metadata": {"path": str(tmp_path)}})
        made.append(km)
        return km, client

    yield start
    for km in made:
        pid = km.provisioner.pid if km.provisioner else None
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def outputs(cell, kind=None):
    return [o for o in cell.outputs if kind is None or o.get("output_type") == kind]


def shown(cell, mime):
    """The `mime` data of the cell's results and displays."""
    return [o["data"][mime] for o in cell.outputs
            if o.get("output_type") in ("execute_result", "display_data") and mime in o.get("data", {})]


def stream(cell, name):
    return "".join(o["text"] for o in outputs(cell, "stream") if o["name"] == name)


def source_index(nb, text):
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source)


def test_the_sweep_notebook_runs_and_shows_html_progress_a_dataframe_and_a_plot(kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    km, client = kernel(nb)
    client.execute()
    for i, cell in enumerate(nb.cells):
        errors = outputs(cell, "error") if cell.cell_type == "code" else []
        assert not errors, f"cell {i}: {errors[0]['ename']}: {errors[0]['evalue']}"
    first = shown(nb.cells[source_index(nb, "ex = dynexec.Executor(")], "text/html")
    assert first and "dynexec.Executor" in first[0] and "lease expires in" in first[0]
    assert first[0].count("<code>server-") == 2  # both compute servers listed

    sweep = nb.cells[source_index(nb, "progress=")]
    assert "sweep" in stream(sweep, "stderr") and "240/240" in stream(sweep, "stderr")  # the bar, done
    assert "(240, 3)" in stream(sweep, "stdout")  # the DataFrame's shape
    table = shown(sweep, "text/html")
    assert table and "lyapunov" in table[0] and "attractor" in table[0]

    assert shown(nb.cells[source_index(nb, "plt.subplots")], "image/png")  # the plot

    future = shown(nb.cells[source_index(nb, "f = ex.submit")], "text/html")
    assert future and "dynexec.JobFuture" in future[0] and "<b>ok</b>" in future[0]
    result = shown(nb.cells[source_index(nb, "dynexec.find(")], "text/html")
    assert result and "dynexec.Result" in result[0] and "archived" in result[0] and ".h5:/results[" in result[0]
    last = shown(nb.cells[source_index(nb, "ex.shutdown()") - 1], "text/html")
    assert last and "failed 0" in last[0]  # every job of the sweep, counted


INTERRUPTED = [
    """
    import time, dynexec, tqdm
    ex = dynexec.Executor(max_workers=2, archive=False)
    futures = [ex.submit(time.sleep, 1) for _ in range(40)]
    """,
    "dynexec.wait(futures, progress='waiting')",  # interrupted
    "print('open bars', len(tqdm.tqdm._instances), 'cancelled', sum(f.cancel() for f in futures) > 30)",
    "for _ in ex.map(time.sleep, [1] * 40, progress='mapping'): pass",  # interrupted: the rest is cancelled
    """
    print('open bars', len(tqdm.tqdm._instances))
    print('next', ex.submit(pow, 2, 10).result(timeout=60), list(ex.map(pow, [3] * 3, range(3), progress=True)))
    """,
    "for f in futures: f.kill()\nex.shutdown(cancel_futures=True)",
]


def test_a_jupyter_interrupt_during_a_wait_with_progress_closes_the_bar_and_the_next_cell_runs(kernel):
    import textwrap
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in INTERRUPTED])
    km, client = kernel(nb)
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            interrupt = threading.Timer(2.5, km.interrupt_kernel) if i in (1, 3) else None
            if interrupt:
                interrupt.start()
            try:
                client.execute_cell(cell, i)
            finally:
                if interrupt:
                    interrupt.cancel()
            errors = outputs(cell, "error")
            if i in (1, 3):
                assert errors and errors[0]["ename"] == "KeyboardInterrupt", (i, cell.outputs)
                assert ("waiting" if i == 1 else "mapping") in stream(cell, "stderr")
            else:
                assert not errors, (i, errors)
        assert stream(nb.cells[2], "stdout").split() == ["open", "bars", "0", "cancelled", "True"]
        out = stream(nb.cells[4], "stdout").split("\n")
        assert out[0] == "open bars 0" and out[1] == "next 1024 [1, 3, 9]"


def test_the_readme_jupyter_section_runs_as_cells(kernel):
    import re
    readme = (NOTEBOOK.parents[1] / "README.md").read_text()
    section = readme.split("\n## Jupyter\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(b) for b in blocks]
                                  + [nbformat.v4.new_code_cell("ex.shutdown()")])
    km, client = kernel(nb)
    client.execute()
    for i, cell in enumerate(nb.cells):
        assert not outputs(cell, "error"), (i, outputs(cell, "error"))
    views = [shown(cell, "text/html") for cell in nb.cells[:3]]
    assert [v and v[0].split("</b>", 1)[0] for v in views] == [
        "<div><b>dynexec.Executor", "<div><b>dynexec.JobFuture", "<div><b>dynexec.Result"]
    assert "squares" in stream(nb.cells[1], "stderr") and "100/100" in stream(nb.cells[1], "stderr")
