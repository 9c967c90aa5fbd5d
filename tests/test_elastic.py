"""Servers that join mid-run get work; servers that stop renewing lose their jobs to others; no job is lost or doubled."""
import time
from collections import Counter

import pytest

import dynexec


def nap(i, seconds):
    time.sleep(seconds)
    return i


def archived_ids(archive, session):
    records = dynexec.read_archive(archive / f"{session}.h5")
    return Counter(list(records)), {k: r["status"] for k, r in records.items()}


@pytest.mark.parametrize("processes", [True, False])
def test_server_that_joins_mid_run_gets_work(archive, processes):
    with dynexec.Executor(max_workers=1, policy="fewest_outstanding", archive=archive, processes=processes) as ex:
        first = [ex.submit(nap, i, 0.05) for i in range(20)]
        new_id = ex.add_server()
        later = [ex.submit(nap, i, 0.05) for i in range(20)]
        assert [f.result(timeout=30) for f in first + later] == list(range(20)) * 2
        ran_on = [dynexec.find(f.job_id, archive).server for f in first + later]
        # The newcomer shares the backlog at once: it takes about half of the 20+ jobs left when it joined.
        assert ran_on.count(new_id) >= 10


@pytest.mark.parametrize("processes", [True, False])
def test_idle_server_takes_a_job_queued_behind_a_long_one_and_it_runs_once(archive, processes):
    with dynexec.Executor(max_workers=2, policy="round_robin", archive=archive, processes=processes) as ex:
        a, b = (s["id"] for s in ex.servers())
        long = ex.submit(nap, "long", 1.0)                           # -> a
        short = [ex.submit(nap, i, 0.01) for i in range(3)]          # -> b, a (behind the long one), b
        # b runs dry while a is busy: it takes the job queued on a, which runs long before a is free
        assert short[1].result(timeout=0.8) == 1
        assert long.result(timeout=30) == "long" and [f.result(timeout=30) for f in short] == [0, 1, 2]
        stats, done = ex.stats(), {s["id"]: s["statistics"]["jobs_done"] for s in ex.servers()}
        ran_on = dynexec.find(short[1].job_id, archive).server
    assert stats["stolen"] >= 1, stats
    assert ran_on == b
    assert done == {a: 1, b: 3}, done  # a dropped its copy (told so by message when in another process)


def test_server_that_stops_renewing_loses_its_jobs_to_the_others_exactly_once(archive):
    n = 40
    with dynexec.Executor(max_workers=2, policy="round_robin", archive=archive, lease_seconds=0.3,
                          renew_seconds=0.05, processes=False) as ex:
        futures = [ex.submit(nap, i, 0.03) for i in range(n)]
        time.sleep(0.05)  # both servers are busy, each with a queue
        hung = ex.servers()[0]["id"]
        ex._engine.stop_renewing(hung)  # like a hung host: it keeps running but its lease runs out
        assert sorted(f.result(timeout=30) for f in futures) == list(range(n))
        assert [s["id"] for s in ex.servers()] != [] and hung not in [s["id"] for s in ex.servers()]
        stats = ex.stats()
        session = ex.session
    assert stats["redispatched"] > 0
    counts, statuses = archived_ids(archive, session)
    assert len(counts) == n and set(counts.values()) == {1}
    assert set(statuses.values()) == {"ok"}
    assert {f.job_id for f in futures} == set(counts)
    # Results of re-dispatched jobs name the server that really delivered them.
    servers = {dynexec.find(f.job_id, archive).server for f in futures[-10:]}
    assert hung not in servers


def test_job_that_keeps_losing_its_server_fails_clearly(archive):
    with dynexec.Executor(max_workers=1, archive=archive, lease_seconds=0.2, renew_seconds=0.05,
                          max_attempts=2, processes=False) as ex:
        f = ex.submit(nap, 1, 2.0)
        time.sleep(0.05)
        for _ in range(2):
            victim = ex.servers()[0]["id"]
            ex.add_server()
            ex._engine.stop_renewing(victim)
            deadline = time.time() + 5
            while victim in [s["id"] for s in ex.servers()] and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)
        with pytest.raises(dynexec.ServerLostError, match="max_attempts=2"):
            f.result(timeout=10)


@pytest.mark.parametrize("processes", [True, False])
def test_removed_server_gets_no_more_jobs(archive, processes):
    with dynexec.Executor(max_workers=2, archive=archive, processes=processes) as ex:
        gone = ex.servers()[0]["id"]
        ex.remove_server(gone)
        futures = [ex.submit(nap, i, 0) for i in range(20)]
        assert [f.result(timeout=10) for f in futures] == list(range(20))
        assert gone not in {dynexec.find(f.job_id, archive).server for f in futures}
        assert gone not in [s["id"] for s in ex.servers()]


def test_killed_server_process_loses_its_jobs_to_the_others_exactly_once(archive):
    import os
    import signal
    n = 60
    with dynexec.Executor(max_workers=2, policy="round_robin", archive=archive, lease_seconds=0.5) as ex:
        victim = ex.servers()[0]
        futures = [ex.submit(nap, i, 0.02) for i in range(n)]
        time.sleep(0.1)  # both servers are busy, each with a queue
        os.kill(victim["pid"], signal.SIGKILL)
        assert sorted(f.result(timeout=30) for f in futures) == list(range(n))
        assert victim["id"] not in [s["id"] for s in ex.servers()]
        assert ex.stats()["redispatched"] > 0
        session = ex.session
    counts, statuses = archived_ids(archive, session)
    assert len(counts) == n and set(counts.values()) == {1} and set(statuses.values()) == {"ok"}


@pytest.mark.parametrize("second_registered", [True, False])
def test_jobs_of_a_balancer_whose_lease_runs_out_go_through_another(archive, second_registered):
    n = 30
    with dynexec.Executor(max_workers=2, archive=archive, lease_seconds=0.3, renew_seconds=0.05) as ex:
        futures = [ex.submit(nap, i, 0.02) for i in range(n)]
        first = ex._engine.balancers()
        assert len(first) == 1
        if second_registered:
            second = ex._engine.add_balancer()  # registers itself; the manager still uses the first
            assert ex._engine.balancers() == first + [second]
        ex._engine.stop_renewing(first[0])  # the balancer hangs: the manager must find another or start one
        assert sorted(f.result(timeout=30) for f in futures) == list(range(n))
        now = ex._engine.balancers()
        assert first[0] not in now and len(now) == 1
        if second_registered:
            assert now == [second]
        assert ex.submit(nap, 99, 0).result(timeout=10) == 99
        session = ex.session
    counts, statuses = archived_ids(archive, session)
    assert len(counts) == n + 1 and set(counts.values()) == {1} and set(statuses.values()) == {"ok"}
