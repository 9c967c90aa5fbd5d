#include "common/result_queue.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace dynexec {
namespace {

using namespace std::chrono_literals;

Result result_of(const JobId& id) {
    Result r;
    r.job_id = id;
    return r;
}

std::vector<Result> batch(std::initializer_list<const char*> ids) {
    std::vector<Result> out;
    for (auto id : ids) out.push_back(result_of(id));
    return out;
}

std::vector<JobId> ids_of(const std::vector<Result>& rs) {
    std::vector<JobId> out;
    for (auto& r : rs) out.push_back(r.job_id);
    return out;
}

TEST(ResultQueue, AnExpectedResultGoesToItsCallerAndTheRestToThePoller) {
    ResultQueue q;
    ASSERT_TRUE(q.expect("b"));
    EXPECT_EQ(q.push(batch({"a", "b", "c"})), 3u);
    auto mine = q.await("b", 0ms);
    ASSERT_TRUE(mine);
    EXPECT_EQ(mine->job_id, "b");
    EXPECT_EQ(ids_of(q.poll(10, 0ms)), (std::vector<JobId>{"a", "c"}));
    EXPECT_FALSE(q.await("b", 0ms)); // taken: no longer expected
}

TEST(ResultQueue, ACallerWakesWhenItsResultComes) {
    ResultQueue q;
    ASSERT_TRUE(q.expect("x"));
    std::thread later([&] {
        std::this_thread::sleep_for(20ms);
        q.push(batch({"x"}));
    });
    auto r = q.await("x", 10s);
    later.join();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->job_id, "x");
}

TEST(ResultQueue, AResultThatCameBeforeItWasExpectedIsTheCallersFromTheQueue) {
    ResultQueue q;
    q.push(batch({"a", "b"}));
    ASSERT_TRUE(q.expect("b"));
    ASSERT_TRUE(q.await("b", 0ms));
    EXPECT_EQ(ids_of(q.poll(10, 0ms)), (std::vector<JobId>{"a"}));
}

// The poller settles what it took before it polls again: a caller must wait for that, not for a result that
// will never come to it.
TEST(ResultQueue, AResultInThePollersLastBatchIsNotExpected) {
    ResultQueue q;
    q.push(batch({"a"}));
    EXPECT_EQ(q.poll(10, 0ms).size(), 1u);
    EXPECT_FALSE(q.expect("a"));
    q.poll(10, 0ms); // the poller is back: it settled "a"; a caller checks its future after expect()
    EXPECT_TRUE(q.expect("a"));
}

TEST(ResultQueue, OneCallerPerJob) {
    ResultQueue q;
    EXPECT_TRUE(q.expect("a"));
    EXPECT_FALSE(q.expect("a")); // the second waits for the first to settle the future
}

TEST(ResultQueue, AForgottenResultGoesToThePoller) {
    ResultQueue q;
    ASSERT_TRUE(q.expect("a"));
    EXPECT_FALSE(q.await("a", 1ms)); // a timeout
    q.forget("a");
    q.push(batch({"a"}));
    EXPECT_EQ(ids_of(q.poll(10, 0ms)), (std::vector<JobId>{"a"}));

    ASSERT_TRUE(q.expect("b"));
    q.push(batch({"b"}));
    q.forget("b"); // came, but the caller left (an interrupt) before it took it
    EXPECT_EQ(ids_of(q.poll(10, 0ms)), (std::vector<JobId>{"b"}));
}

TEST(ResultQueue, ALongQueueIsLeftToThePoller) {
    ResultQueue q;
    std::vector<Result> many;
    for (int i = 0; i < 1000; ++i) many.push_back(result_of("j" + std::to_string(i)));
    q.push(std::move(many));
    EXPECT_FALSE(q.expect("j999"));
    EXPECT_EQ(q.poll(5000, 0ms).size(), 1000u);
}

} // namespace
} // namespace dynexec
