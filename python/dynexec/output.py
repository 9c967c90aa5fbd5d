"""Live echo of what jobs print: Executor(echo_output=True).

Compute-server processes send each job's output in batches (about every 100 ms or 64 KiB) while it runs;
a thread here writes it line by line, each line labelled with its job ID (``[<job_id>] text``), to the
caller's stdout or stderr as the job wrote it. In Jupyter (ipykernel), lines go to the cell that submitted
the job: its parent header is taken at submit time, and the lines are sent on the kernel's IOPub channel
with it, as ipykernel's own streams send theirs.
"""
from __future__ import annotations

import codecs
import itertools
import sys
import threading

_MAX_TRACKED = 1 << 18


def _submitting_cell():
    """Where the calling cell's output goes, in an ipykernel; None elsewhere."""
    out, err = sys.stdout, sys.stderr
    for s in (out, err):
        if not all(hasattr(s, a) for a in ("session", "pub_thread", "parent_header", "topic")):
            return None
    return out, err, dict(out.parent_header)


class Echo:
    """Echoes the output of the jobs it tracks; started by an Executor, stopped by its shutdown.

    track(futures, where()) is the hook for per-job options: only tracked jobs are echoed."""

    def __init__(self, engine):
        self._engine = engine
        self._targets: dict[str, object] = {}  # job ID -> None (sys.stdout/err now) or a Jupyter cell
        self._partial: dict[tuple[str, int], tuple[object, str]] = {}  # (job, stream) -> (decoder, line so far)
        self._early: dict[str, list] = {}  # job ID -> chunks that came before the submit returned its ID
        self._lock = threading.Lock()  # guards all of the above; held while writing, so lines keep their order
        self._stop = threading.Event()
        engine.set_echo(True)
        self._thread = threading.Thread(target=self._run, name="dynexec-echo", daemon=True)
        self._thread.start()

    def where(self):
        """Where the jobs submitted now should echo: call before submitting (a job may print at once)."""
        return _submitting_cell()

    def track(self, futures, where=None) -> None:
        """Echoes these jobs' output to `where` (from where()); output that arrived before is written now."""
        with self._lock:
            for f in futures:
                self._targets[f.job_id] = where
                for chunk in self._early.pop(f.job_id, ()):
                    self._echo(*chunk)
            for d in (self._targets, self._early):
                if len(d) > _MAX_TRACKED:  # jobs that never ran (or were never tracked): forget the oldest
                    for job_id in list(itertools.islice(d, _MAX_TRACKED // 4)):
                        del d[job_id]

    def stop(self, timeout: float = 5.0) -> None:
        """Writes what has arrived, then ends the thread (once the engine has delivered every result, all
        output has arrived: a job's output travels ahead of its result)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self):
        while True:
            chunks = self._engine.poll_output(1024, 0.1)
            for chunk in chunks:
                with self._lock:
                    if chunk[0] in self._targets:
                        self._echo(*chunk)
                    else:
                        self._early.setdefault(chunk[0], []).append(chunk)
            if not chunks and self._stop.is_set():
                return

    def _echo(self, job_id: str, stream: int, data: bytes, final: bool) -> None:
        """Under _lock, for a tracked job."""
        where = self._targets.pop(job_id) if final else self._targets[job_id]
        try:
            self._lines(where, job_id, stream, data, final)
        except Exception as exc:  # a closed stream, say: lose this chunk, not the echo
            print(f"dynexec: cannot echo output of job {job_id}: {exc}", file=sys.__stderr__)

    def _lines(self, where, job_id: str, stream: int, data: bytes, final: bool) -> None:
        if final:  # the job has ended: its last lines need no newline to be shown
            for s in (1, 2):
                decoder, text = self._partial.pop((job_id, s), (None, ""))
                if decoder is not None:
                    text += decoder.decode(b"", final=True)
                if text:
                    self._write(where, s, f"[{job_id}] {text}\n")
            return
        decoder, text = self._partial.get((job_id, stream)) or (codecs.getincrementaldecoder("utf-8")("replace"), "")
        *lines, rest = (text + decoder.decode(data)).split("\n")
        self._partial[(job_id, stream)] = (decoder, rest)
        if lines:
            self._write(where, stream, "".join(f"[{job_id}] {line}\n" for line in lines))

    @staticmethod
    def _write(where, stream: int, text: str) -> None:
        if where is None:
            s = sys.stdout if stream == 1 else sys.stderr
            s.write(text)
            s.flush()
            return
        out, err, parent = where
        s = out if stream == 1 else err
        s.session.send(s.pub_thread, "stream", content={"name": "stdout" if stream == 1 else "stderr", "text": text},
                       parent=parent, ident=s.topic)
