"""What Jupyter shows (issue 13, point 2): the HTML views of an Executor, a JobFuture and a Result (escaped,
bounded, never raising), and the progress bars of map, as_completed and wait (tqdm, or plain text)."""
import _thread
import io
import threading
import time

import numpy as np
import pytest

import dynexec
from dynexec import display, progress

pytestmark = pytest.mark.timeout(120)

EVIL = "<script>alert('x')</script>"


def fail(message):
    raise ValueError(message)


def echo(x):
    return x


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    with dynexec.Executor(max_workers=2, archive=tmp_path_factory.mktemp("archive")) as ex:
        yield ex


def test_executor_html_shows_servers_leases_and_job_counts(ex):
    ok = [ex.submit(echo, i) for i in range(3)]
    bad = ex.submit(fail, "no")
    dynexec.wait(ok + [bad])
    deadline = time.monotonic() + 10  # the engine counts a result once archived
    while ex.stats()["delivered"] < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    page = ex._repr_html_()
    for s in ex.servers():
        assert f"<code>{s['id']}</code>" in page and f">{s['pid']}<" in page
    assert "lease expires in" in page
    facts = display.executor_facts(ex)
    assert facts["failed"] >= 1 and facts["done"] >= 4 and facts["submitted"] >= 4
    assert f"failed {facts['failed']}" in page and f"done {facts['done']}" in page
    assert str(ex.archive) in page and ex.session in page
    text = repr(ex)
    assert text.startswith("<dynexec.Executor session=") and f"servers={len(ex.servers())}" in text


def test_a_shut_down_executor_still_shows():
    e = dynexec.Executor(max_workers=1, archive=False, processes=False)
    e.submit(pow, 2, 2).result()
    e.shutdown()
    assert "shut down" in repr(e) and "(shut down)" in e._repr_html_()


def test_values_and_errors_are_escaped_and_bounded(ex):
    good = ex.submit(echo, EVIL * 10_000)
    bad = ex.submit(fail, EVIL)
    big = ex.submit(np.zeros, (2000, 2000))
    dynexec.wait([good, bad, big])
    for view in (good._repr_html_(), bad._repr_html_(), big._repr_html_(),
                 ex.find(good.job_id)._repr_html_(), ex.find(bad.job_id)._repr_html_()):
        assert "<script>" not in view and ("&lt;script&gt;" in view or "ndarray" in view)
        assert len(view) < 20_000  # summarised, not dumped
    assert "ndarray float64 (2000, 2000)" in big._repr_html_()
    r = ex.find(bad.job_id)
    page = r._repr_html_()
    assert f"<code>{r.location}</code>" in page and "ValueError: &lt;script&gt;" in page and r.server in page
    assert "traceback" in page and "started" in page and "ran " in page
    assert "archived" in bad._repr_html_() and "ValueError: &lt;script&gt;" in bad._repr_html_()


def test_a_pending_future_shows_its_state(ex):
    f = ex.submit(time.sleep, 0.5)
    assert f.job_id in f._repr_html_() and ("pending" in f._repr_html_() or "running" in f._repr_html_())
    f.result()
    assert "<b>ok</b>" in f._repr_html_()


class Hostile:
    def __repr__(self):
        raise RuntimeError("repr fails")


def test_views_never_raise():
    assert "Hostile" in display.summary(Hostile())  # reprlib says whose repr failed

    class Broken:  # nothing an executor view reads is there
        _closing = None
    assert "executor_html failed: AttributeError" in display.executor_html(Broken())
    assert "executor_text failed" in display.executor_text(Broken())


def test_plain_bar_counts_and_closes():
    out = io.StringIO()
    b = progress.PlainBar(4, "sweep", file=out)
    for _ in range(4):
        b.update()
    b.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sweep:   0% 0/4 jobs") and lines[-1].startswith("sweep: 100% 4/4 jobs")
    assert len(lines) == 2  # not a terminal: no line per update


class Recorder:
    """Stands in for the bar: what it was told."""
    made = []

    def __init__(self, total, desc="", unit="job"):
        self.total, self.desc, self.unit, self.n, self.closed = total, desc, unit, 0, False
        Recorder.made.append(self)

    def update(self, n=1):
        self.n += n

    def refresh(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(progress, "bar", Recorder)
    return Recorder.made


def test_map_as_completed_and_wait_show_progress(ex, bars):
    assert list(ex.map(echo, range(30), progress="sweep")) == list(range(30))
    assert list(ex.map(pow, [2] * 100, range(100), chunksize=7, progress=True)) == [2 ** i for i in range(100)]
    fs = [ex.submit(echo, i) for i in range(20)]
    assert sorted(f.result() for f in dynexec.as_completed(fs, progress=True)) == list(range(20))
    done, not_done = dynexec.wait([ex.submit(echo, i) for i in range(20)], progress=True)
    assert len(done) == 20 and not not_done
    assert [(b.desc, b.total, b.n, b.unit, b.closed) for b in bars] == [
        ("sweep", 30, 30, "job", True), ("", 100, 100, "item", True), ("", 20, 20, "job", True),
        ("", 20, 20, "job", True)]


def test_progress_off_makes_no_bar(ex, bars):
    assert list(ex.map(echo, range(5))) == list(range(5))
    assert len(dynexec.wait([ex.submit(echo, 1)]).done) == 1
    assert list(dynexec.as_completed([ex.submit(echo, 1)]))
    assert bars == []


def test_wait_with_progress_keeps_its_timeout_and_return_when(ex, bars):
    slow = ex.submit(time.sleep, 3)
    done, not_done = dynexec.wait([slow, ex.submit(echo, 1)], timeout=0.5, progress=True)
    assert len(done) == 1 and not_done == {slow} and bars[-1].closed
    bad = ex.submit(fail, "first")
    done, not_done = dynexec.wait([slow, bad], return_when="FIRST_EXCEPTION", progress=True)
    assert bad in done and slow in not_done
    slow.kill()


def test_map_with_progress_keeps_its_timeout(ex, bars):
    with pytest.raises(TimeoutError):
        list(ex.map(time.sleep, [0.0, 1.5], timeout=0.5, progress=True))
    assert bars[-1].closed and bars[-1].n == 1


def test_ctrl_c_during_a_map_with_progress_closes_the_bar_and_cancels_the_rest(ex, bars):
    results = ex.map(time.sleep, [0.2] * 40, progress=True)
    timer = threading.Timer(0.5, _thread.interrupt_main)  # as Ctrl-C does
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in results:
                pass
    finally:
        timer.cancel()
    assert bars[-1].closed and 0 < bars[-1].n < 40
    assert list(ex.map(echo, range(3))) == [0, 1, 2]  # the executor carries on


def test_tqdm_is_used_when_there():
    tqdm = pytest.importorskip("tqdm")
    b = progress.bar(3, "x")
    try:
        assert isinstance(b, tqdm.tqdm)
    finally:
        b.close()
