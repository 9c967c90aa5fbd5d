#include "balancer/load_balancer.hpp"
#include "server/compute_server.hpp"
#include "testing/fakes.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <set>
#include <thread>

using namespace dynexec;
using namespace dynexec::testing;
using namespace std::chrono_literals;

struct BalancerTest : ::testing::Test {
    FakeClock clock;
    LookupRegistry registry{clock};
    std::shared_ptr<CollectingSink> results = std::make_shared<CollectingSink>();

    std::shared_ptr<LoadBalancer> balancer(std::string policy = "fewest_outstanding", int max_attempts = 3) {
        return LoadBalancer::create(registry, results, {std::move(policy), max_attempts, 7});
    }
    std::pair<std::shared_ptr<FakeServer>, std::string> server(Duration lease = 2s, unsigned slots = 1) {
        auto s = std::make_shared<FakeServer>();
        s->n_slots = slots; // a server's slots are fixed when it registers, as a real one's are
        return {s, registry.join(server_registration(s), lease).id};
    }
};

TEST_F(BalancerTest, SpreadsJobsAndArchivesEachResultOnce) {
    auto lb = balancer();
    auto [a, aid] = server(2s, 4); // room for 5 each
    auto [b, bid] = server(2s, 4);
    for (int i = 0; i < 10; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    EXPECT_EQ(a->runs.size(), 5u);
    EXPECT_EQ(b->runs.size(), 5u);
    EXPECT_EQ(lb->outstanding(), 10u);
    for (std::size_t i = 0; i < 5; ++i) {
        a->finish(i);
        b->finish(i);
    }
    EXPECT_EQ(lb->outstanding(), 0u);
    ASSERT_EQ(results->results.size(), 10u);
    EXPECT_EQ(results->results[0].server, aid); // stamped by the balancer from its own table
    EXPECT_EQ(results->results[0].attempts, 1);
}

TEST_F(BalancerTest, ServerThatJoinsGetsTheNextJob) {
    auto lb = balancer();
    auto [a, aid] = server();
    lb->dispatch(make_job("j1"));
    lb->dispatch(make_job("j2"));
    auto [b, bid] = server(); // joins mid-run: it takes j2, queued on a, at once
    ASSERT_EQ(b->runs.size(), 1u);
    EXPECT_EQ(b->runs[0].job->id, "j2");
    EXPECT_EQ(a->revoked, (std::vector<std::pair<JobId, int>>{{"j2", 1}}));
    lb->dispatch(make_job("j3")); // and the very next dispatch sees it
    ASSERT_EQ(a->runs.size(), 3u);
    EXPECT_EQ(a->runs[2].job->id, "j3");
}

TEST_F(BalancerTest, ServerPastItsLeaseNeverGetsAJob) {
    auto lb = balancer("round_robin");
    auto [a, aid] = server(1s);
    auto [b, bid] = server(10s, 3);
    clock.advance(1500ms); // a has not renewed; the reaper has not run yet
    for (int i = 0; i < 4; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    EXPECT_TRUE(a->runs.empty());
    EXPECT_EQ(b->runs.size(), 4u);
}

TEST_F(BalancerTest, JobsOfAVanishedServerRunElsewhereAndLateResultsAreDropped) {
    auto lb = balancer();
    auto [a, aid] = server(1s);
    lb->dispatch(make_job("j1")); // -> a
    auto [b, bid] = server(10s);
    ASSERT_EQ(a->runs.size(), 1u);
    ASSERT_TRUE(a->runs[0].job->try_start(1)); // a is running it when it goes silent
    clock.advance(2s);
    registry.expire_due();
    ASSERT_EQ(b->runs.size(), 1u);
    EXPECT_EQ(b->runs[0].attempt, 2);
    // a comes back to life and reports: its dispatch is no longer the current one
    Result late;
    late.job_id = "j1";
    a->runs[0].sink->complete(late, 1);
    EXPECT_TRUE(results->results.empty());
    EXPECT_EQ(lb->stats().stale, 1u);
    ASSERT_TRUE(b->finish(0));
    ASSERT_EQ(results->results.size(), 1u);
    EXPECT_EQ(results->results[0].server, bid);
    EXPECT_EQ(results->results[0].attempts, 2);
    EXPECT_EQ(lb->stats().redispatched, 1u);
}

TEST_F(BalancerTest, QueuedJobOnAVanishedServerCannotStartThere) {
    auto lb = balancer();
    auto [a, aid] = server(1s);
    lb->dispatch(make_job("j1"));
    auto [b, bid] = server(10s);
    clock.advance(2s);
    registry.expire_due();
    EXPECT_FALSE(a->finish(0)); // the old dispatch can no longer start
    EXPECT_TRUE(b->finish(0));
    EXPECT_EQ(results->results.size(), 1u);
}

TEST_F(BalancerTest, JobThatOutlivesMaxAttemptsServersFailsClearly) {
    auto lb = balancer("fewest_outstanding", 2);
    auto [a, aid] = server(1s);
    lb->dispatch(make_job("doom"));
    ASSERT_TRUE(a->start(0));
    clock.advance(500ms);
    auto [b, bid] = server(1s);
    clock.advance(600ms);
    registry.expire_due(); // a is gone: its job moves to b
    ASSERT_EQ(b->runs.size(), 1u);
    EXPECT_TRUE(results->results.empty());
    ASSERT_TRUE(b->start(0));
    clock.advance(500ms);
    registry.expire_due(); // b is gone too: that was the last attempt
    ASSERT_EQ(results->results.size(), 1u);
    auto& r = results->results[0];
    EXPECT_EQ(r.status, Status::lost);
    EXPECT_EQ(r.error_type, "ServerLostError");
    EXPECT_NE(r.message.find(aid), std::string::npos);
    EXPECT_NE(r.message.find(bid), std::string::npos);
    EXPECT_NE(r.message.find("max_attempts=2"), std::string::npos);
    EXPECT_EQ(lb->outstanding(), 0u);
}

TEST_F(BalancerTest, JobWaitsForAServerThenRunsOnTheFirstToJoin) {
    auto lb = balancer();
    lb->dispatch(make_job("early"));
    EXPECT_EQ(lb->stats().waiting, 1u);
    auto [a, aid] = server();
    ASSERT_EQ(a->runs.size(), 1u);
    EXPECT_EQ(lb->stats().waiting, 0u);
    EXPECT_TRUE(a->finish(0));
}

TEST_F(BalancerTest, CancelBeforeStartOnly) {
    auto lb = balancer();
    auto [a, aid] = server();
    lb->dispatch(make_job("c1"));
    lb->dispatch(make_job("c2"));
    EXPECT_TRUE(lb->cancel("c1"));
    EXPECT_FALSE(lb->cancel("c1"));
    EXPECT_FALSE(a->finish(0)); // the server skips it
    ASSERT_TRUE(a->runs[1].job->try_start(1));
    EXPECT_FALSE(lb->cancel("c2")); // running
    ASSERT_EQ(results->results.size(), 1u);
    EXPECT_EQ(results->results[0].status, Status::cancelled);
    EXPECT_EQ(lb->outstanding(), 1u);
}

TEST_F(BalancerTest, PolicyDecidesWithServerStatistics) {
    auto lb = balancer("least_busy_time");
    auto [a, aid] = server();
    auto [b, bid] = server();
    a->s.busy_time = 10;
    b->s.busy_time = 1;
    lb->dispatch(make_job("j"));
    EXPECT_EQ(b->runs.size(), 1u);
    EXPECT_THROW(balancer("nope"), std::invalid_argument);
    EXPECT_THROW(balancer("round_robin", 0), std::invalid_argument);
}

TEST_F(BalancerTest, AnotherBalancerTakesOverAbandonedJobsAndOlderDispatchesDie) {
    auto lb1 = balancer();
    auto [a, aid] = server();
    lb1->dispatch(make_job("started"));
    lb1->dispatch(make_job("queued"));
    ASSERT_TRUE(a->runs[0].job->try_start(1)); // running when its balancer goes
    auto jobs = lb1->abandon();
    ASSERT_EQ(jobs.size(), 2u);
    EXPECT_EQ(lb1->outstanding(), 0u);
    EXPECT_THROW(lb1->dispatch(make_job("late")), std::logic_error);

    auto lb2 = balancer();
    for (auto& j : jobs) lb2->dispatch(j);
    ASSERT_EQ(a->runs.size(), 4u);
    EXPECT_EQ(a->runs[2].attempt, 2);
    EXPECT_FALSE(a->finish(1)); // the first balancer's dispatch of "queued" can no longer start
    Result late;
    late.job_id = "started";
    a->runs[0].sink->complete(late, 1); // the first balancer's running job reports: nobody keeps it
    EXPECT_TRUE(results->results.empty());
    EXPECT_TRUE(a->finish(2));
    EXPECT_TRUE(a->finish(3));
    ASSERT_EQ(results->results.size(), 2u);
    for (auto& r : results->results) // attempts counts the starts that happened
        EXPECT_EQ(r.attempts, r.job_id == "started" ? 2 : 1) << r.job_id;
}

TEST_F(BalancerTest, ServerHoldsItsCapacityAndTheRestWaitInTheBalancer) {
    auto lb = balancer();
    auto [a, aid] = server();
    for (int i = 0; i < 5; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    ASSERT_EQ(a->runs.size(), 2u); // one slot and one spare, before any run time is known
    EXPECT_EQ(lb->stats().waiting, 3u);
    EXPECT_EQ(lb->outstanding(), 5u);
    ASSERT_TRUE(a->finish(0));
    ASSERT_EQ(a->runs.size(), 3u); // a freed slot takes the oldest waiting job
    EXPECT_EQ(a->runs[2].job->id, "j2");
    for (std::size_t i = 1; i < 5; ++i) {
        ASSERT_LT(i, a->runs.size());
        ASSERT_TRUE(a->finish(i));
    }
    EXPECT_EQ(results->results.size(), 5u);
    EXPECT_EQ(lb->stats().waiting, 0u);
}

TEST_F(BalancerTest, ServerThatJoinsUnderABacklogTakesWaitingJobsAtOnce) {
    auto lb = balancer();
    auto [a, aid] = server();
    for (int i = 0; i < 10; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    ASSERT_EQ(a->runs.size(), 2u);
    auto [b, bid] = server(); // nothing finished meanwhile: the join alone hands it work
    ASSERT_EQ(b->runs.size(), 2u);
    EXPECT_EQ(b->runs[0].job->id, "j2");
    EXPECT_EQ(lb->stats().waiting, 6u);
}

TEST_F(BalancerTest, CancelledWaitingJobNeverRuns) {
    auto lb = balancer();
    auto [a, aid] = server();
    for (int i = 0; i < 4; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    EXPECT_TRUE(lb->cancel("j2"));
    EXPECT_EQ(lb->stats().waiting, 1u);
    ASSERT_TRUE(a->finish(0));
    ASSERT_EQ(a->runs.size(), 3u);
    EXPECT_EQ(a->runs[2].job->id, "j3"); // j2 was skipped
    ASSERT_EQ(results->results.size(), 2u);
    EXPECT_EQ(results->results[0].status, Status::cancelled);
    EXPECT_EQ(lb->cancel_all(), 2u);
    EXPECT_EQ(lb->stats().waiting, 0u);
}

TEST_F(BalancerTest, OrphansOfAVanishedServerGoAheadOfWaitingJobs) {
    auto lb = balancer();
    auto [a, aid] = server(1s);
    auto [b, bid] = server(10s);
    for (int i = 0; i < 6; ++i) lb->dispatch(make_job("j" + std::to_string(i), "test.echo"));
    ASSERT_EQ(a->runs.size() + b->runs.size(), 4u);
    clock.advance(2s);
    registry.expire_due(); // a's two jobs wait again, ahead of j4 and j5
    EXPECT_EQ(lb->stats().waiting, 4u);
    ASSERT_TRUE(b->finish(0));
    ASSERT_EQ(b->runs.size(), 3u);
    EXPECT_EQ(b->runs[2].job->id, a->runs[0].job->id);
    EXPECT_EQ(b->runs[2].attempt, 2);
}

TEST_F(BalancerTest, TinyJobsGetADeepQueueOnEveryServerNewcomersIncluded) {
    auto lb = balancer("round_robin");
    auto [a, aid] = server();
    for (int i = 0; i < 3; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    ASSERT_EQ(a->runs.size(), 2u);
    ASSERT_TRUE(a->finish(0, 1.0, 1e-5)); // 10 us jobs: about 100 fit in a millisecond
    EXPECT_EQ(a->runs.size(), 3u);
    auto [b, bid] = server(); // not measured yet: taken to be like the others, not given one spare only
    for (int i = 0; i < 300; ++i) lb->dispatch(make_job("k" + std::to_string(i)));
    // b took j2 from a's queue when it joined, then as much as a
    EXPECT_EQ(a->runs.size(), 2u + Capacity::of(1, 1e-5));
    EXPECT_EQ(b->runs.size(), Capacity::of(1, 1e-5));
}

TEST_F(BalancerTest, ServerWithNothingToDoStealsTheNewestQueuedJobs) {
    auto lb = balancer();
    auto [a, aid] = server();
    lb->dispatch(make_job("warm"));
    ASSERT_TRUE(a->finish(0, 1.0, 1e-5)); // tiny jobs: a takes a deep queue
    for (int i = 0; i < 50; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    ASSERT_EQ(a->runs.size(), 51u);
    auto [b, bid] = server(); // nothing waits in the balancer: b takes half of a's queue, newest first
    ASSERT_EQ(b->runs.size(), 25u);
    EXPECT_EQ(b->runs[0].job->id, "j49");
    EXPECT_EQ(b->runs[0].attempt, 2);
    ASSERT_EQ(a->revoked.size(), 25u);
    EXPECT_EQ(a->revoked[0], (std::pair<JobId, int>{"j49", 1}));
    EXPECT_FALSE(a->finish(50)); // a's dispatch of j49 can no longer start
    EXPECT_TRUE(b->finish(0));
    EXPECT_EQ(lb->stats().stolen, 25u); // b still has work: it steals nothing
    for (std::size_t i = 1; i <= 25; ++i) EXPECT_TRUE(a->finish(i));
    EXPECT_EQ(lb->stats().stolen, 37u); // a ran dry and took half of b's 24 queued back
    EXPECT_EQ(results->results.size(), 27u); // warm, j49 on b, j0..j24 on a
}

TEST_F(BalancerTest, ServerThatStillHasWorkStealsNothing) {
    auto lb = balancer("round_robin");
    auto [a, aid] = server();
    auto [b, bid] = server();
    for (int i = 0; i < 4; ++i) lb->dispatch(make_job("j" + std::to_string(i))); // each: one running, one queued
    ASSERT_EQ(a->runs.size(), 2u);
    ASSERT_EQ(b->runs.size(), 2u);
    ASSERT_TRUE(a->finish(0)); // a still has j2 to run
    EXPECT_EQ(lb->stats().stolen, 0u);
    ASSERT_TRUE(a->finish(1));  // now a would idle while b has j3 queued behind j1
    EXPECT_EQ(lb->stats().stolen, 1u);
    ASSERT_EQ(a->runs.size(), 3u);
    EXPECT_EQ(a->runs[2].job->id, "j3");
    EXPECT_FALSE(b->finish(1)); // b skips it
}

TEST_F(BalancerTest, FinishedJobsBehindAStuckOneAreNotKeptAlive) {
    auto lb = balancer();
    auto [a, aid] = server();
    lb->dispatch(make_job("stuck")); // never finishes: the front of everything sent to a
    std::vector<std::weak_ptr<Job>> done;
    for (int i = 0; i < 1000; ++i) {
        lb->dispatch(make_job("j" + std::to_string(i)));
        ASSERT_EQ(a->runs.back().job->id, "j" + std::to_string(i));
        ASSERT_TRUE(a->finish(a->runs.size() - 1));
        done.push_back(a->runs.back().job);
        a->runs.pop_back(); // the server lets go of it, as a real one does
    }
    auto alive = std::count_if(done.begin(), done.end(), [](auto& w) { return !w.expired(); });
    EXPECT_LE(alive, 2 * (2 + 64)); // bounded, not all 1000
    EXPECT_EQ(results->results.size(), 1000u);
}

TEST(Capacity, HoldsAboutAMillisecondOfWorkAheadOfEachServer) {
    EXPECT_EQ(Capacity::of(1, -1), 2u);     // unmeasured: one spare
    EXPECT_EQ(Capacity::of(1, 5e-3), 2u);   // long jobs: still one spare, so no slot waits for a round trip
    EXPECT_EQ(Capacity::of(4, 5e-3), 5u);
    EXPECT_EQ(Capacity::of(1, 1e-5), 101u); // 10 us jobs: 100 queued
    EXPECT_EQ(Capacity::of(2, 0.0), 2u + Capacity::kMaxPrefetch);
    EXPECT_DOUBLE_EQ(Capacity::average(-1, 3.0), 3.0);
    EXPECT_DOUBLE_EQ(Capacity::average(1.0, 2.0), 1.0 + Capacity::kWeight);
}

// -- the life of a job: what runs once, cancel, kill, crashes, retries ---------------------------------------

struct LifecycleTest : BalancerTest {
    std::pair<std::shared_ptr<FakeServer>, std::string> remote_server(Duration lease = 2s) {
        auto s = std::make_shared<FakeServer>();
        s->remote = true;
        return {s, registry.join(server_registration(s), lease).id};
    }
    const Result* result_of(const JobId& id) {
        for (auto& r : results->results)
            if (r.job_id == id) return &r;
        return nullptr;
    }
};

TEST_F(LifecycleTest, AStealFromAServerInAnotherProcessWaitsForItsWord) {
    auto lb = balancer();
    auto [a, aid] = remote_server();
    lb->dispatch(make_job("warm"));
    ASSERT_TRUE(a->start(0));
    ASSERT_TRUE(a->finish(0, 1.0, 1e-5)); // tiny jobs: a takes a deep queue
    for (int i = 0; i < 4; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    ASSERT_EQ(a->runs.size(), 5u);
    auto [b, bid] = server(); // b would take jobs queued on a, but only once a says they have not started
    EXPECT_EQ(a->revoked.size(), 2u);
    EXPECT_TRUE(b->runs.empty());
    a->answer(4, false); // j3 had just started there: it stays
    EXPECT_TRUE(b->runs.empty());
    a->answer(3, true); // j2 had not: it moves
    ASSERT_EQ(b->runs.size(), 1u);
    EXPECT_EQ(b->runs[0].job->id, "j2");
    EXPECT_TRUE(b->finish(0));
    ASSERT_TRUE(a->start(4));
    EXPECT_TRUE(a->finish(4));
    EXPECT_EQ(result_of("j2")->attempts, 1); // it ran once, and its move did not count as a start
    EXPECT_EQ(lb->stats().stolen, 1u);
}

TEST_F(LifecycleTest, CancelOfAJobQueuedInAnotherProcessReturnsTheServersAnswer) {
    auto lb = balancer();
    auto [a, aid] = remote_server();
    lb->dispatch(make_job("first"));
    lb->dispatch(make_job("second"));
    ASSERT_EQ(a->runs.size(), 2u);
    ASSERT_TRUE(a->start(0));
    std::optional<bool> first, second;
    lb->cancel("first", [&](bool ok) { first = ok; });
    EXPECT_EQ(first, false); // the server said it started: no need to ask
    lb->cancel("second", [&](bool ok) { second = ok; });
    EXPECT_FALSE(second.has_value()); // asked, not answered yet
    EXPECT_EQ(lb->state("second"), JobState::queued);
    a->answer(1, true);
    EXPECT_EQ(second, true);
    ASSERT_NE(result_of("second"), nullptr);
    EXPECT_EQ(result_of("second")->status, Status::cancelled);
    EXPECT_EQ(lb->state("first"), JobState::running);
}

TEST_F(LifecycleTest, ACancelTheServerRefusesReturnsFalseAndTheJobRuns) {
    auto lb = balancer();
    auto [a, aid] = remote_server();
    lb->dispatch(make_job("j"));
    std::optional<bool> answer;
    lb->cancel("j", [&](bool ok) { answer = ok; });
    a->answer(0, false); // it had started: its start message was on its way
    EXPECT_EQ(answer, false);
    ASSERT_TRUE(a->start(0));
    EXPECT_TRUE(a->finish(0));
    EXPECT_EQ(result_of("j")->status, Status::ok);
}

TEST_F(LifecycleTest, ACrashCountsAgainstTheJobsThatRanThereAndNotTheQueuedOnes) {
    auto lb = balancer("fewest_outstanding", 2);
    auto [a, aid] = remote_server();
    lb->dispatch(make_job("poison"));
    lb->dispatch(make_job("innocent"));
    ASSERT_EQ(a->runs.size(), 2u); // poison started, but its start message was lost with the process
    registry.cancel(aid, "killed by signal 11 (SIGSEGV)", /*clean=*/false, /*died=*/true);
    auto [b, bid] = remote_server();
    ASSERT_EQ(b->runs.size(), 2u);
    EXPECT_EQ(b->runs[0].job->id, "poison");
    ASSERT_TRUE(b->start(0));
    registry.cancel(bid, "killed by signal 11 (SIGSEGV)", false, true);
    auto* r = result_of("poison");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->status, Status::lost);
    EXPECT_EQ(r->error_type, "ServerDiedError");
    EXPECT_NE(r->message.find("SIGSEGV"), std::string::npos) << r->message;
    EXPECT_NE(r->message.find(aid), std::string::npos);
    EXPECT_NE(r->message.find(bid), std::string::npos);
    EXPECT_EQ(r->attempts, 2);
    EXPECT_EQ(result_of("innocent"), nullptr); // it never ran: it waits for the next server
    auto [c, cid] = server();
    ASSERT_EQ(c->runs.size(), 1u);
    EXPECT_TRUE(c->finish(0));
    EXPECT_EQ(result_of("innocent")->attempts, 1);
}

TEST_F(LifecycleTest, AServerThatLeavesCleanlyCostsItsJobsNoAttempt) {
    auto lb = balancer("fewest_outstanding", 1);
    auto [a, aid] = remote_server();
    lb->dispatch(make_job("j"));
    registry.cancel(aid, "ended to stop a job", /*clean=*/true);
    auto [b, bid] = server();
    ASSERT_EQ(b->runs.size(), 1u);
    EXPECT_TRUE(b->finish(0));
    EXPECT_EQ(result_of("j")->status, Status::ok);
}

TEST_F(LifecycleTest, KillStopsARunningJobAndCancelsAQueuedOne) {
    auto lb = balancer();
    auto [a, aid] = server();
    lb->dispatch(make_job("running"));
    lb->dispatch(make_job("queued"));
    lb->dispatch(make_job("waiting")); // beyond a's capacity: in the balancer
    ASSERT_TRUE(a->start(0));
    EXPECT_TRUE(lb->kill("running", Status::killed));
    ASSERT_EQ(a->stopped.size(), 1u);
    EXPECT_EQ(a->stopped[0], (std::tuple<JobId, int, Status>{"running", 1, Status::killed}));
    EXPECT_TRUE(lb->kill("queued", Status::killed));
    EXPECT_EQ(result_of("queued")->status, Status::cancelled);
    EXPECT_FALSE(a->finish(1)); // it never starts
    EXPECT_TRUE(lb->kill("waiting", Status::killed));
    EXPECT_EQ(result_of("waiting")->status, Status::cancelled);
    EXPECT_FALSE(lb->kill("nonesuch", Status::killed));
}

TEST_F(LifecycleTest, AKilledJobWhoseServerEndsIsNotRunAgain) {
    auto lb = balancer();
    auto [a, aid] = remote_server();
    lb->dispatch(make_job("j"));
    ASSERT_TRUE(a->start(0));
    lb->kill("j", Status::timeout);
    registry.cancel(aid, "ended to stop a job", true);
    auto [b, bid] = server();
    EXPECT_TRUE(b->runs.empty());
    ASSERT_NE(result_of("j"), nullptr);
    EXPECT_EQ(result_of("j")->status, Status::timeout);
}

TEST_F(LifecycleTest, RetriesRunAFailedJobAgainAndCountItsStarts) {
    auto lb = balancer();
    auto [a, aid] = server();
    auto job = make_job("flaky");
    job->retries = 2;
    lb->dispatch(job);
    Result failed;
    failed.job_id = "flaky";
    failed.status = Status::error;
    failed.error_type = "ValueError";
    ASSERT_TRUE(a->start(0));
    a->runs[0].sink->complete(failed, a->runs[0].attempt);
    EXPECT_TRUE(results->results.empty());
    ASSERT_EQ(a->runs.size(), 2u);
    EXPECT_EQ(lb->stats().retried, 1u);
    EXPECT_TRUE(a->finish(1));
    ASSERT_EQ(results->results.size(), 1u);
    EXPECT_EQ(results->results[0].status, Status::ok);
    EXPECT_EQ(results->results[0].attempts, 2);
}

TEST_F(LifecycleTest, FailAllEndsEveryUnfinishedJobWithTheReason) {
    auto lb = balancer();
    auto [a, aid] = server();
    for (int i = 0; i < 5; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
    EXPECT_EQ(lb->fail_all("BrokenExecutor", "no compute server could be started"), 5u);
    ASSERT_EQ(results->results.size(), 5u);
    for (auto& r : results->results) {
        EXPECT_EQ(r.status, Status::lost);
        EXPECT_EQ(r.error_type, "BrokenExecutor");
    }
    EXPECT_FALSE(a->finish(1)); // queued ones never start
    EXPECT_EQ(lb->outstanding(), 0u);
}

TEST_F(LifecycleTest, CancelManyTakesTheWaitingJobsFirstSoNoneIsSentToAServerMeanwhile) {
    auto lb = balancer();
    auto [a, aid] = server();
    std::vector<JobId> ids;
    for (int i = 0; i < 6; ++i) {
        ids.push_back("j" + std::to_string(i));
        lb->dispatch(make_job(ids.back()));
    }
    ASSERT_EQ(a->runs.size(), 2u); // j0 and j1 are on the server, the rest wait here
    ASSERT_TRUE(a->start(0));      // j0 runs
    auto answers = lb->cancel_many(ids);
    EXPECT_EQ(answers, (std::vector<bool>{false, true, true, true, true, true}));
    EXPECT_EQ(a->runs.size(), 2u); // the slot j1 left was not given to a job being cancelled
    EXPECT_EQ(results->results.size(), 5u);
    EXPECT_TRUE(a->finish(0));
    EXPECT_EQ(lb->outstanding(), 0u);
}

// -- no server is called under the balancer's lock ----------------------------------------------------------
// Each server below calls back into the balancer from inside the call the balancer made to it, as an
// in-process server finishing a job at once would. Under the lock, that call would deadlock.

namespace {
// Runs `body` on a thread of its own: a deadlock fails the test binary instead of hanging it.
void bounded(std::function<void()> body) {
    constexpr auto limit = std::chrono::seconds(30);
    std::promise<void> done;
    auto finished = done.get_future();
    std::thread t([&] {
        try {
            body();
            done.set_value();
        } catch (...) {
            done.set_exception(std::current_exception());
        }
    });
    if (finished.wait_for(limit) != std::future_status::ready) {
        std::fprintf(stderr, "deadlock: the test body did not return within 30 s\n");
        std::fflush(nullptr);
        std::_Exit(1); // its thread is stuck holding the fixture: nothing can be unwound
    }
    t.join();
    finished.get();
}
} // namespace

struct UnlockedTest : LifecycleTest, ::testing::WithParamInterface<std::string> {};

TEST_P(UnlockedTest, AServerThatFinishesEachJobInsideRunGetsEveryJobOnceAndFlat) {
    bounded([&] {
        auto lb = balancer(GetParam());
        auto a = std::make_shared<FakeServer>(), b = std::make_shared<FakeServer>();
        a->n_slots = 2;
        int depth = 0, deepest = 0, slots_read = 0, stats_read = 0;
        for (auto* s : {a.get(), b.get()}) {
            s->on_call = [&, s, lb = lb.get()](std::string_view what, const JobPtr& job, int) {
                EXPECT_LE(lb->outstanding(), 350u); // the balancer answers from inside any call to a server
                slots_read += what == "slots";
                stats_read += what == "stats";
                if (what != "run") return;
                deepest = std::max(deepest, ++depth);
                EXPECT_EQ(lb->state(job->id), JobState::queued);
                EXPECT_GE(lb->backlog().queued, 1u);
                EXPECT_TRUE(s->finish(s->runs.size() - 1, 1.0, 1e-3)); // its result, before run() returns
                --depth;
            };
        }
        registry.join(server_registration(a), 2s);
        registry.join(server_registration(b), 2s);
        EXPECT_EQ(slots_read, 2); // once per server, when it is first seen
        std::vector<JobPtr> batch;
        for (int i = 0; i < 300; ++i) batch.push_back(make_job("b" + std::to_string(i)));
        lb->dispatch(std::move(batch));
        for (int i = 0; i < 50; ++i) lb->dispatch(make_job("s" + std::to_string(i)));
        EXPECT_EQ(lb->outstanding(), 0u);
        ASSERT_EQ(results->results.size(), 350u);
        std::set<JobId> ids;
        for (auto& r : results->results) {
            EXPECT_EQ(r.status, Status::ok);
            EXPECT_EQ(r.attempts, 1);
            ids.insert(r.job_id);
        }
        EXPECT_EQ(ids.size(), 350u);
        EXPECT_EQ(a->runs.size() + b->runs.size(), 350u); // none ran twice
        EXPECT_EQ(deepest, 1); // the next job is sent after run() returns, not from inside it
        EXPECT_EQ(slots_read, 2);
        EXPECT_EQ(stats_read > 0, make_policy(GetParam(), 0)->needs_stats());
    });
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, UnlockedTest, ::testing::ValuesIn([] {
                             std::vector<std::string> names;
                             for (auto n : policy_names()) names.emplace_back(n);
                             return names;
                         }()));

TEST_F(LifecycleTest, AKillThatTheServerAnswersAtOnceEndsTheJobAndFreesItsSlot) {
    bounded([&] {
        auto lb = balancer();
        auto [a, aid] = server();
        a->on_call = [&](std::string_view what, const JobPtr& job, int attempt) {
            if (what != "stop") return;
            Result r; // a job that cannot be asked to stop is given up on at once, as a python job is
            r.job_id = job->id;
            r.status = Status::killed;
            r.error_type = "JobKilledError";
            a->runs.at(0).sink->complete(std::move(r), attempt);
        };
        for (int i = 0; i < 3; ++i) lb->dispatch(make_job("j" + std::to_string(i)));
        ASSERT_EQ(a->runs.size(), 2u); // j2 waits in the balancer
        ASSERT_TRUE(a->start(0));
        EXPECT_TRUE(lb->kill("j0", Status::killed));
        ASSERT_NE(result_of("j0"), nullptr);
        EXPECT_EQ(result_of("j0")->status, Status::killed);
        ASSERT_EQ(a->runs.size(), 3u); // its slot went to the waiting job
        EXPECT_EQ(a->runs[2].job->id, "j2");
        EXPECT_EQ(lb->outstanding(), 2u);
    });
}

TEST_F(LifecycleTest, AKillOfAJobRunningInAComputeServerThatGivesUpOnItAtOnce) {
    std::mutex mu;
    std::condition_variable cv;
    bool started = false, release = false;
    ServiceCatalog catalog;
    catalog.add({"test.block", "", {}, [&](const Params&) -> Value {
                     std::unique_lock lk(mu);
                     started = true;
                     cv.notify_all();
                     cv.wait(lk, [&] { return release; }); // bounded: the test releases it
                     return 1.0;
                 }});
    ComputeServer::Options o;
    o.threads = 1;
    o.stop_grace = 0; // stop() gives up on the job and sends its result from inside the call
    auto cs = std::make_shared<ComputeServer>(o, catalog);
    auto lb = balancer();
    registry.join(server_registration(cs, {catalog.find("test.block")}), 2s);
    bounded([&] {
        lb->dispatch(make_job("j", "test.block"));
        {
            std::unique_lock lk(mu);
            ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(30), [&] { return started; }));
        }
        EXPECT_TRUE(lb->kill("j", Status::killed));
        ASSERT_NE(result_of("j"), nullptr); // heard before kill() returned, on this thread
        EXPECT_EQ(result_of("j")->status, Status::killed);
        EXPECT_EQ(lb->outstanding(), 0u);
    });
    {
        std::lock_guard lk(mu);
        release = true;
    }
    cv.notify_all();
    cs->wait_idle();
    EXPECT_EQ(results->results.size(), 1u); // what it returned later was dropped
}

TEST_F(LifecycleTest, ACancelFromInsideAServersCallHearsItsAnswer) {
    bounded([&] {
        auto lb = balancer();
        auto [a, aid] = server();
        std::optional<bool> answer;
        a->on_call = [&, lb = lb.get()](std::string_view what, const JobPtr& job, int) {
            if (what == "run" && job->id == "y") answer = lb->cancel("x"); // waits: its revoke is sent from here
        };
        lb->dispatch(make_job("x"));
        lb->dispatch(make_job("y"));
        ASSERT_EQ(a->runs.size(), 2u);
        EXPECT_EQ(answer, true);
        EXPECT_EQ(a->revoked, (std::vector<std::pair<JobId, int>>{{"x", 1}}));
        ASSERT_NE(result_of("x"), nullptr);
        EXPECT_EQ(result_of("x")->status, Status::cancelled);
        EXPECT_FALSE(a->finish(0)); // x never starts
        EXPECT_TRUE(a->finish(1));
        EXPECT_EQ(lb->outstanding(), 0u);
    });
}

TEST_F(LifecycleTest, AJobBeingMovedIsQueuedToWhoeverAsksMeanwhile) {
    bounded([&] {
        auto lb = balancer();
        auto [a, aid] = server();
        std::vector<std::optional<JobState>> seen;
        a->on_call = [&, lb = lb.get()](std::string_view what, const JobPtr& job, int) {
            if (what != "revoke") return;
            EXPECT_EQ(job->state(), JobState::cancelled); // this server has given it up...
            seen.push_back(lb->state(job->id));           // ...and the balancer has not heard yet
            EXPECT_EQ(lb->backlog().queued, 2u);
        };
        lb->dispatch(make_job("j1"));
        lb->dispatch(make_job("j2"));
        auto [b, bid] = server(); // steals j2
        EXPECT_EQ(seen, (std::vector<std::optional<JobState>>{JobState::queued}));
        ASSERT_EQ(b->runs.size(), 1u);
        EXPECT_EQ(b->runs[0].job->id, "j2");
        EXPECT_EQ(lb->state("j2"), JobState::queued);
    });
}

TEST_F(LifecycleTest, CallsReachTheServersInTheOrderTheBalancerDecidedThem) {
    bounded([&] {
        auto lb = balancer();
        auto [a, aid] = server();
        std::vector<std::string> log;
        std::shared_ptr<FakeServer> b;
        auto record = [&](std::string name) {
            return [&, name](std::string_view what, const JobPtr& job, int attempt) {
                if (!job) return; // stats(), slots()
                log.push_back(fmt::format("{} {} {} {}", name, what, job->id, attempt));
                if (name == "a" && what == "run" && job->id == "j0") {
                    // A server joins while the balancer is still sending the batch: it steals from a's
                    // queue at once, jobs whose run() to a has not been made yet.
                    b = std::make_shared<FakeServer>();
                    b->on_call = [&](std::string_view w, const JobPtr& j, int at) {
                        if (j) log.push_back(fmt::format("b {} {} {}", w, j->id, at));
                    };
                    registry.join(server_registration(b), 2s);
                }
            };
        };
        lb->dispatch(make_job("warm"));
        ASSERT_TRUE(a->finish(0, 1.0, 1e-5)); // tiny jobs: a takes a deep queue
        a->on_call = record("a");
        std::vector<JobPtr> batch;
        for (int i = 0; i < 6; ++i) batch.push_back(make_job("j" + std::to_string(i)));
        lb->dispatch(std::move(batch));
        // Every run to a before any revoke of the same job; each stolen job runs on b once a gave it up.
        EXPECT_EQ(log, (std::vector<std::string>{"a run j0 1", "a run j1 1", "a run j2 1", "a run j3 1",
                                                 "a run j4 1", "a run j5 1", "a revoke j5 1", "a revoke j4 1",
                                                 "a revoke j3 1", "b run j5 2", "b run j4 2", "b run j3 2"}));
        EXPECT_EQ(lb->stats().stolen, 3u);
        log.clear();
        ASSERT_TRUE(b->start(0));
        EXPECT_TRUE(lb->kill("j5", Status::killed)); // running: its server is asked to stop it
        EXPECT_TRUE(lb->kill("j4", Status::killed)); // queued in this process: revoked here, no call
        EXPECT_EQ(log, (std::vector<std::string>{"b stop j5 2"}));
        EXPECT_EQ(result_of("j4")->status, Status::cancelled);
        EXPECT_FALSE(b->finish(1));
    });
}
