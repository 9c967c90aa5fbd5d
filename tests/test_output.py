"""Each job's stdout and stderr are kept (on its future and in its result) and can be echoed live."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import dynexec


def chatty(marker, n=50):
    """Prints its marker n times to stdout and stderr, slowly enough that jobs on other servers overlap."""
    for i in range(n):
        print(marker, i)
        sys.stderr.write(f"{marker} err {i}\n")
        time.sleep(0.002)
    return marker


@pytest.mark.parametrize("slots", [1, 2], ids=["two servers, fds redirected", "one server, two slots"])
def test_print_and_stderr_are_captured_per_job_without_mixing(slots):
    with dynexec.Executor(max_workers=2 // slots, slots_per_server=slots, archive=False) as ex:
        a, b = ex.submit(chatty, "AAA"), ex.submit(chatty, "BBB")
        assert (a.result(timeout=60), b.result(timeout=60)) == ("AAA", "BBB")
        assert ex.submit(chatty, "nothing", 0).result(timeout=60) == "nothing"
    for f, mine in ((a, "AAA"), (b, "BBB")):
        assert f.stdout == "".join(f"{mine} {i}\n" for i in range(50))
        assert f.stderr == "".join(f"{mine} err {i}\n" for i in range(50))


def test_a_failing_job_keeps_its_output_with_its_error():
    def fails():
        print("working on it")
        print("giving up", file=sys.stderr)
        raise KeyError("missing")

    with dynexec.Executor(max_workers=1, archive=False) as ex:
        f = ex.submit(fails)
        with pytest.raises(KeyError, match="missing"):
            f.result(timeout=60)
    assert f.stdout == "working on it\n"
    assert f.stderr == "giving up\n"


def test_invalid_utf8_is_replaced_and_oversized_output_is_cut_with_a_note():
    def messy():
        sys.stdout.buffer.write(b"bad \xff\xfe bytes\n")
        os.write(2, b"raw \xc3 fd\n")  # one slot: fd 2 is captured too
        sys.stdout.write("x" * (3 << 19))  # 1.5 MiB, above the 1 MiB kept per stream
        return "done"

    with dynexec.Executor(max_workers=1, archive=False) as ex:
        f = ex.submit(messy)
        assert f.result(timeout=60) == "done"
    head = b"bad \xff\xfe bytes\n"
    kept, _, note = f.stdout.rpartition("\n[dynexec: ")
    assert kept == "bad \ufffd\ufffd bytes\n" + "x" * ((1 << 20) - len(head))  # the first 1 MiB written
    assert f.stderr == "raw \ufffd fd\n"
    assert note.startswith(f"{len(head) + (3 << 19) - (1 << 20)} more bytes of stdout dropped"), note


def test_a_native_service_writing_to_file_descriptors_is_captured(run_python, build_plugin):
    lib = build_plugin("noisy", """
        #include <dynexec/service.hpp>
        #include <cstdio>
        #include <iostream>
        #include <unistd.h>
        DYNEXEC_SERVICES(r) {
            r.add({"test.noisy", "prints", {{"x", dynexec::ValueType::integer}},
                   [](const dynexec::Params& p) -> dynexec::Value {
                       auto x = p.get<std::int64_t>("x");
                       std::printf("printf %lld\\n", (long long)x);
                       std::cout << "cout " << x << std::endl;
                       std::cerr << "cerr " << x << "\\n";
                       (void)!write(2, "fd2\\n", 4);
                       return x;
                   }});
        }
    """)
    out = run_python(f"""
        import json, dynexec
        dynexec.load_services({str(lib)!r})
        with dynexec.Executor(max_workers=2, archive=False) as ex:
            fs = [ex.submit_service("test.noisy", x=i) for i in range(4)]
            print(json.dumps([(f.result(timeout=30), f.stdout, f.stderr) for f in fs]))
    """)
    results = json.loads(out.splitlines()[-1])
    assert results == [[i, f"printf {i}\ncout {i}\n", f"cerr {i}\nfd2\n"] for i in range(4)]


def test_live_echo_reaches_the_caller_labelled_while_the_job_runs(tmp_path):
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, sys, time, dynexec

        def waits(path):
            print("started", flush=True)
            print("to stderr", file=sys.stderr)
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:  # the test sees the echo first
                time.sleep(0.01)
            print("no newline at the end", end="")
            return os.path.exists(path)

        with dynexec.Executor(max_workers=1, archive=False, echo_output=True) as ex:
            f = ex.submit(waits, {str(go)!r})
            print("job", f.job_id, flush=True)
            print("result", f.result(timeout=60), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job_id = proc.stdout.readline().split()[-1]
        # Seen before the job ends: it waits for this file until it is made (or 30 s pass, and the test fails).
        assert proc.stdout.readline() == f"[{job_id}] started\n"
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"[{job_id}] no newline at the end\n" in out
    assert "result True\n" in out
    assert f"[{job_id}] to stderr\n" in err


def test_nothing_is_echoed_unless_asked(run_python):
    out = run_python("""
        import dynexec
        with dynexec.Executor(max_workers=1, archive=False) as ex:
            f = ex.submit(print, "quiet")
            f.result(timeout=30)
            print("captured", repr(f.stdout))
    """)
    assert out == "captured 'quiet\\n'\n"


def test_find_returns_the_output(archive):
    with dynexec.Executor(max_workers=1, archive=archive) as ex:
        f = ex.submit(print, "archived")
        f.result(timeout=30)
    r = dynexec.find(f.job_id, archive=archive)
    assert (r.stdout, r.stderr) == ("archived\n", "")


def test_live_echo_in_jupyter_goes_to_the_cell_that_submitted(run_python):
    # ipykernel's streams carry the running cell's parent header and send on IOPub; a stand-in records that.
    out = run_python("""
        import json, sys, dynexec

        class Session:
            sent = []
            def send(self, stream, msg_type, content, parent, ident):
                self.sent.append((stream, msg_type, content, parent["msg_id"], ident.decode()))

        class OutStream:
            def __init__(self, name):
                self.session, self.pub_thread, self.topic = Session(), "iopub", f"stream.{name}".encode()
                self.parent_header = {"msg_id": "cell-1"}
            def write(self, s): pass
            def flush(self): pass

        real = sys.stdout
        with dynexec.Executor(max_workers=1, archive=False, echo_output=True) as ex:
            sys.stdout, sys.stderr = OutStream("stdout"), OutStream("stderr")
            f = ex.submit(print, "from the job")
            sys.stdout.parent_header = sys.stderr.parent_header = {"msg_id": "cell-2"}  # the next cell runs
            f.result(timeout=30)
        sys.stdout = real
        print(json.dumps([Session.sent, f.job_id]))
    """)
    sent, job_id = json.loads(out.splitlines()[-1])
    assert sent == [["iopub", "stream", {"name": "stdout", "text": f"[{job_id}] from the job\n"}, "cell-1",
                     "stream.stdout"]]


