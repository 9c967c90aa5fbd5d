#include "server/compute_server.hpp"
#include "testing/fakes.hpp"

#include <gtest/gtest.h>

#include <condition_variable>
#include <thread>

using namespace dynexec;
using namespace dynexec::testing;

namespace {
struct WaitingSink final : CompletionSink {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Result> results;
    void complete(Result r, int) override {
        std::lock_guard lk(mu);
        results.push_back(std::move(r));
        cv.notify_all();
    }
    void wait_for(std::size_t n) {
        std::unique_lock lk(mu);
        ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(10), [&] { return results.size() >= n; }));
    }
};

} // namespace

struct ServerTest : ::testing::Test {
    std::atomic<int> running{0}, peak{0};
    ServiceCatalog catalog;
    std::shared_ptr<WaitingSink> sink = std::make_shared<WaitingSink>();
    void SetUp() override { add_test_services(catalog); }
    void add_test_services(ServiceCatalog& c) {
        c.add({"test.slow", "", {}, [this](const Params&) -> Value {
                   int now = ++running;
                   for (int p = peak; now > p && !peak.compare_exchange_weak(p, now);) {
                   }
                   std::this_thread::sleep_for(std::chrono::milliseconds(20));
                   --running;
                   return std::int64_t(1);
               }});
        c.add({"test.fail", "", {}, [](const Params&) -> Value { throw std::invalid_argument("bad x"); }});
        c.add({"test.typed_fail", "", {}, [](const Params&) -> Value {
                   throw ServiceError("ValueError", "nope", "Traceback...");
               }});
    }
};

TEST_F(ServerTest, RunsEveryJobWithinItsSlotsAndKeepsStatistics) {
    ComputeServer server({2, 4}, catalog);
    for (int i = 0; i < 12; ++i) server.run(make_job("j" + std::to_string(i), "test.slow"), 0, sink);
    sink->wait_for(12);
    server.wait_idle();
    EXPECT_EQ(peak.load(), 2); // both slots used, never more
    auto s = server.stats();
    EXPECT_EQ(s.jobs_done, 12u);
    EXPECT_EQ(s.in_flight, 0u);
    EXPECT_GE(s.busy_time, 12 * 0.019);
    EXPECT_GT(s.last_completion, 0);
    for (auto& r : sink->results) {
        EXPECT_EQ(r.status, Status::ok);
        EXPECT_LE(r.start_time, r.end_time);
    }
}

TEST_F(ServerTest, FailuresBecomeErrorResults) {
    ComputeServer server({1, 1}, catalog);
    server.run(make_job("f1", "test.fail"), 0, sink);
    server.run(make_job("f2", "test.typed_fail"), 0, sink);
    server.run(make_job("f3", "no.such.service"), 0, sink);
    sink->wait_for(3);
    EXPECT_EQ(sink->results[0].status, Status::error);
    EXPECT_EQ(sink->results[0].error_type, "std::invalid_argument");
    EXPECT_EQ(sink->results[0].message, "bad x");
    EXPECT_EQ(sink->results[1].error_type, "ValueError");
    EXPECT_EQ(sink->results[1].traceback, "Traceback...");
    EXPECT_EQ(sink->results[2].error_type, "UnknownService");
    EXPECT_EQ(server.stats().jobs_done, 3u); // a failed job is still a job done
}

TEST_F(ServerTest, SkipsJobsCancelledOrRedispatchedBeforeTheyStart) {
    ComputeServer server({1, 1}, catalog);
    auto blocker = make_job("b", "test.slow");
    auto cancelled = make_job("c", "test.slow");
    auto moved = make_job("m", "test.slow");
    server.run(blocker, 0, sink);
    cancelled->try_cancel();
    server.run(cancelled, 0, sink);
    moved->requeue(1); // re-dispatched elsewhere as attempt 1
    server.run(moved, 0, sink);
    server.wait_idle();
    ASSERT_EQ(sink->results.size(), 1u);
    EXPECT_EQ(sink->results[0].job_id, "b");
    EXPECT_EQ(server.stats().in_flight, 0u);
}
