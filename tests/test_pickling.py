"""Functions pickled by value (defined in __main__: a script, a notebook cell) are cached as a template, and a
job still sees what they captured as it is at submit: rebound globals, mutated lists, closure cells, defaults."""
import json
import pickle
import subprocess
import sys
import textwrap

import pytest

import dynexec
from dynexec import _pickling
from dynexec.executor import _function_blob

pytestmark = pytest.mark.timeout(120)

SOURCE = """
import math
K = 3
data = [1, 2]
def helper(y):
    return y * K + len(data)
def f(x, scale=2, acc=[0]):
    return helper(x) * scale + math.floor(0.5) + sum(acc)
def make(c):
    def g(x):
        return x + c
    return g
def probe():
    import dynexec._runner as r
    return r.unpickled
def first(seconds):
    import time
    time.sleep(seconds)
    return data[0]
class Box:
    def __init__(self, v):
        self.v = v
box = Box(1)
def unbox():
    return box.v
"""


@pytest.fixture
def ns():
    """A namespace as a script's: its functions have __module__ == "__main__", so they go by value."""
    space = {"__name__": "__main__"}
    exec(compile(SOURCE, "<main-like>", "exec"), space)
    return space


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    # One server process with two slots: every job lands where probe() counts the unpickling.
    with dynexec.Executor(max_workers=1, slots_per_server=2, archive=tmp_path_factory.mktemp("archive")) as ex:
        yield ex


def template(fn):
    part = _function_blob(fn)
    assert isinstance(part, tuple), "a __main__ function should travel as (template, state)"
    return part[0]


def test_a_rebound_global_is_seen_and_makes_a_fresh_template(ex, ns):
    f = ns["f"]
    assert ex.submit(f, 1).result() == (3 + 2) * 2
    before = template(f)
    ns["K"] = 5
    assert ex.submit(f, 1).result() == (5 + 2) * 2
    assert template(f) != before
    ns["K"] = 3.0  # equal to the first value, not the same object: a fresh template again
    assert ex.submit(f, 1).result() == 10.0


def test_a_mutated_global_list_is_seen_while_the_template_stays(ex, ns):
    f = ns["f"]
    first = template(f)
    results = []
    for i in range(5):
        ns["data"].append(i)
        results.append(ex.submit(f, 1).result())
    assert results == [(3 + 3 + i) * 2 for i in range(5)]
    assert template(f) == first


def test_the_server_unpickles_each_template_once(ex, ns):
    f, probe = ns["f"], ns["probe"]
    ex.submit(f, 1).result()
    ex.submit(probe).result()
    count = ex.submit(probe).result()
    for i in range(10):
        ns["data"].append(i)  # mutable state changes: the template does not
        ex.submit(f, 1).result()
    assert ex.submit(probe).result() == count
    ns["K"] = 7  # a new template: unpickled once more, not once per job
    assert [ex.submit(f, 1).result() for _ in range(3)] == [(7 + 12) * 2] * 3
    assert ex.submit(probe).result() == count + 1


def test_closure_cells_and_defaults_are_seen(ex, ns):
    g = ns["make"](10)
    assert ex.submit(g, 1).result() == 11
    g.__closure__[0].cell_contents = 20
    assert ex.submit(g, 1).result() == 21
    f = ns["f"]
    f.__defaults__ = (3, [0])
    assert ex.submit(f, 1).result() == (3 + 2) * 3
    f.__defaults__[1].append(100)  # a mutable default, mutated in place
    assert ex.submit(f, 1).result() == (3 + 2) * 3 + 100
    assert ex.submit(f, 1, 1).result() == (3 + 2) + 100


def test_map_sees_the_state_at_the_call(ex, ns):
    ns["data"][:] = [1]
    assert list(ex.map(ns["f"], range(3))) == [(3 * x + 1) * 2 for x in range(3)]
    ns["data"].append(2)
    assert list(ex.map(ns["f"], range(3))) == [(3 * x + 2) * 2 for x in range(3)]


def test_jobs_running_at_once_each_see_their_own_state(ex, ns):
    first = ns["first"]
    ns["data"][0] = "a"
    a = ex.submit(first, 0.5)
    ns["data"][0] = "b"
    b = ex.submit(first, 0.5)  # the other slot of the same server, while `a` sleeps
    assert (a.result(), b.result()) == ("a", "b")


def test_an_instance_of_a_main_class_and_a_function_with_attributes(ex, ns):
    assert ex.submit(ns["unbox"]).result() == 1
    ns["box"].v = 2
    assert ex.submit(ns["unbox"]).result() == 2
    f = ns["f"]
    f.note = "attributes of its own: pickled whole, every submit"
    assert not isinstance(_function_blob(f), tuple)
    ns["K"] = 4
    assert ex.submit(f, 1).result() == (4 + 2) * 2


def test_an_importable_function_still_goes_by_reference(ex):
    blob = _function_blob(json.dumps)
    assert blob == pickle.dumps(json.dumps, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < 100 and b"co_" not in blob  # module and name, no code
    assert _pickling.function_part(json.dumps) is None
    assert ex.submit(json.dumps, [1]).result() == "[1]"


def test_in_process_servers_run_templates_too(tmp_path, ns):
    with dynexec.Executor(max_workers=2, processes=False, archive=False) as ex:
        assert ex.submit(ns["f"], 1).result() == 10
        ns["data"].append(3)
        assert ex.submit(ns["f"], 1).result() == 12


def test_the_cache_stays_bounded(ns):
    space = {"__name__": "__main__"}
    for i in range(_pickling.MAX_CACHED + 50):
        exec(f"def fn_{i}(x):\n    return x + {i}\n", space)
        assert isinstance(_pickling.function_part(space[f"fn_{i}"]), tuple)
    assert 0 < len(_pickling._captured) <= _pickling.MAX_CACHED


def test_a_real_script(tmp_path):
    script = tmp_path / "job_script.py"
    script.write_text(textwrap.dedent(f"""
        import dynexec
        N = 1
        seen = []
        def job(x):
            return x + N + len(seen)
        with dynexec.Executor(max_workers=1, archive={str(tmp_path / "archive")!r}) as ex:
            out = [ex.submit(job, 0).result()]
            N = 10
            out.append(ex.submit(job, 0).result())
            seen.append(1)
            out.append(ex.submit(job, 0).result())
            print(out)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 10, 11]"
