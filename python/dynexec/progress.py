"""Progress displays for many jobs: Executor.map(progress=True), as_completed(..., progress=True) and
wait(..., progress=True).

The bar is tqdm.auto's when tqdm can be imported (in a notebook with ipywidgets, a widget; elsewhere text),
else a plain line on stderr: rewritten in place with \\r on a terminal, otherwise a new line at most every
PLAIN_INTERVAL seconds. It is drawn by the thread that waits, never by the thread settling results, and closed
however the wait ends (Ctrl-C included). progress=False costs nothing: the plain concurrent.futures calls run.
"""
from __future__ import annotations

import concurrent.futures as cf
import sys
import time
import warnings
from concurrent.futures._base import DoneAndNotDoneFutures

TTY_INTERVAL = 0.1  # seconds between redraws of a plain bar on a terminal
PLAIN_INTERVAL = 10.0  # seconds between lines of a plain bar elsewhere (a log file)
_SLICE = 0.2  # seconds map waits for its next result before redrawing the bar


class PlainBar:
    """A tqdm-like bar (update, close) without tqdm: `desc: n/total [elapsed, rate]` on `file`."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "job", file=None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.file = file if file is not None else sys.stderr
        try:
            self.tty = self.file.isatty()
        except Exception:
            self.tty = False
        self._start = self._drawn = time.monotonic()
        self._drawn_n = -1
        self.closed = False
        self._draw(force=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        of = f"/{self.total}" if self.total is not None else ""
        pct = f"{100 * self.n / self.total:3.0f}% " if self.total else ""
        return f"{self.desc + ': ' if self.desc else ''}{pct}{self.n}{of} {self.unit}s [{elapsed:.1f} s{rate}]"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (now - self._drawn < (TTY_INTERVAL if self.tty else PLAIN_INTERVAL)
                          or (self.n == self._drawn_n and not self.tty)):
            return
        self._drawn, self._drawn_n = now, self.n
        try:
            self.file.write(("\r" + self.line()) if self.tty else self.line() + "\n")
            self.file.flush()
        except Exception:  # a closed stream must not break the wait
            pass

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw(force=self.total is not None and self.n >= self.total)

    def refresh(self) -> None:
        self._draw()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._drawn_n:
            self._draw(force=True)
        if self.tty:
            try:
                self.file.write("\n")
                self.file.flush()
            except Exception:
                pass


def bar(total: int | None, desc: str = "", unit: str = "job"):
    """tqdm.auto's bar when tqdm is there, else a PlainBar."""
    try:
        with warnings.catch_warnings():  # tqdm.auto in a kernel without ipywidgets warns, then uses text
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
            return tqdm(total=total, desc=desc or None, unit=unit)
    except Exception:  # no tqdm, or its notebook bar cannot be made here
        return PlainBar(total, desc, unit)


def _desc(progress) -> str:
    return progress if isinstance(progress, str) else ""


def as_completed(fs, timeout=None, progress=False):
    """concurrent.futures.as_completed; with progress=True (or a description, a str), shows a bar of the
    futures completed so far, closed when the iteration ends, is abandoned or is interrupted."""
    if not progress:
        return cf.as_completed(fs, timeout)
    fs = set(fs)
    return _as_completed(fs, timeout, bar(len(fs), _desc(progress)))


def _as_completed(fs, timeout, b):
    try:
        for f in cf.as_completed(fs, timeout):
            b.update(1)
            yield f
    finally:
        b.close()


def wait(fs, timeout=None, return_when=cf.ALL_COMPLETED, progress=False):
    """concurrent.futures.wait; with progress=True (or a description), shows a bar while it waits."""
    if not progress:
        return cf.wait(fs, timeout, return_when)
    fs = set(fs)
    if return_when == cf.FIRST_COMPLETED or (return_when == cf.FIRST_EXCEPTION and any(
            f.done() and not f.cancelled() and f.exception() is not None for f in fs)):
        return cf.wait(fs, timeout, return_when)  # one future ends it: nothing to count
    try:
        for f in as_completed(fs, timeout, progress):
            if return_when == cf.FIRST_EXCEPTION and not f.cancelled() and f.exception() is not None:
                break
    except cf.TimeoutError:
        pass
    done = {f for f in fs if f.done()}
    return DoneAndNotDoneFutures(done, fs - done)


def in_order(futures: list, end_time: float | None, progress, sizes: list | None = None):
    """Executor.map's results with a bar of jobs completed (items, for chunks of `sizes`), in any order;
    as executor._in_order otherwise: results in submission order, the rest cancelled if abandoned, and no
    reference to a future kept once its result is yielded."""
    arrived: list = []  # a weight appended per completed job (list.append is atomic: callbacks may race)
    if sizes is None:
        for f in futures:
            f.add_done_callback(lambda _, put=arrived.append: put(1))
    else:
        for f, n in zip(futures, sizes):
            f.add_done_callback(lambda _, put=arrived.append, n=n: put(n))
    return _in_order(futures, end_time, bar(sum(sizes) if sizes is not None else len(futures), _desc(progress),
                                            "item" if sizes is not None else "job"), arrived)


def _in_order(futures, end_time, b, arrived):
    seen = 0

    def show():
        nonlocal seen
        now = len(arrived)
        if now > seen:
            b.update(sum(arrived[seen:now]))
            seen = now

    futures.reverse()
    try:
        while futures:
            future = futures.pop()
            try:
                while True:
                    left = None if end_time is None else end_time - time.monotonic()
                    cf.wait((future,), _SLICE if left is None else max(0.0, min(_SLICE, left)))
                    show()
                    if future.done() or (left is not None and left <= _SLICE):
                        break
                    b.refresh()
                result = future.result(None if end_time is None else max(0.0, end_time - time.monotonic()))
            finally:
                future.cancel()  # a no-op once done; stops it after a timeout or Ctrl-C
            future = None
            yield result
            result = None
    finally:
        for future in futures:
            future.cancel()
        show()
        b.close()
