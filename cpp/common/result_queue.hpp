// Results on their way to their owner's process: a poller (the Executor's collector thread) takes them in
// batches, and a caller waiting on one job (future.result()) takes that one itself when it comes, one
// hand-off less than through the poller. Thread-safe.
//
// The race between the two is closed by the order of calls: a caller expect()s its job, then checks that its
// future is still unsettled, then await()s. expect() says no when the job is in the batch the poller took last
// (the poller settles it before it polls again); a result the poller took earlier is settled already, which
// the caller's check sees.
#pragma once

#include "common/job.hpp"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace dynexec {

class ResultQueue {
public:
    // Hands each result to the caller that expects it, else queues it for poll(); returns how many came.
    std::size_t push(std::vector<Result>&& batch);
    // Up to `max` queued results, waiting up to `timeout` for one. What it returns is "the poller's batch" until
    // the next call.
    std::vector<Result> poll(std::size_t max, std::chrono::milliseconds timeout);
    // The caller will await job `id`: false if the poller has it, or has many queued, or another caller expects
    // it; then the caller waits for the poller to settle it instead.
    bool expect(const JobId& id);
    // The expected job's result once it has come, waiting up to `timeout`; nullopt if it has not (yet). A
    // result returned is no longer expected.
    std::optional<Result> await(const JobId& id, std::chrono::milliseconds timeout);
    // The caller no longer waits (a timeout, an interrupt): a result still to come goes to the poller, and one
    // that came meanwhile is queued for it.
    void forget(const JobId& id);

private:
    static constexpr std::size_t kScanned = 64;
    std::mutex mu_;
    std::condition_variable cv_;        // a result queued, or handed to its caller
    std::deque<Result> queue_;          // guarded by mu_
    std::unordered_map<JobId, std::optional<Result>> expected_; // guarded by mu_
    std::unordered_set<JobId> polled_;  // IDs of the poller's last batch; guarded by mu_
};

} // namespace dynexec
