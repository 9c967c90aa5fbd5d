// What the lookup registry hands out: one proxy per registered entity. Here
// every proxy is the component itself (a direct call); a remote proxy will
// implement the same interface by sending messages to another process.
#pragma once

#include "common/job.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace dynexec {

struct ServerStats {
    std::uint64_t jobs_done = 0;
    double busy_time = 0;       // seconds spent running jobs
    double last_completion = 0; // wall seconds of the last completion; 0 = never
    std::uint32_t in_flight = 0; // queued on the server or running
};

// Where a compute server sends each finished job. `attempt` identifies the
// dispatch, so that a late result from a server that was given up on is dropped.
class CompletionSink {
public:
    virtual ~CompletionSink() = default;
    virtual void complete(Result result, int attempt) = 0;
};

class ComputeServerProxy {
public:
    virtual ~ComputeServerProxy() = default;
    // Queues `job` (attempt number `attempt`); the result goes to `sink`. Never blocks on the job.
    virtual void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) = 0;
    virtual ServerStats stats() const = 0;
    virtual unsigned slots() const = 0; // jobs it runs at once
    // The balancer moved dispatch `attempt` of `id` elsewhere: do not start it, if not started yet. A server
    // that shares the Job object needs nothing (its try_start fails); one in another process is told.
    virtual void revoke(const JobId& /*id*/, int /*attempt*/) {}
};

class LoadBalancerProxy {
public:
    virtual ~LoadBalancerProxy() = default;
    virtual void dispatch(JobPtr job) = 0;
    virtual void dispatch(std::vector<JobPtr> jobs) {
        for (auto& j : jobs) dispatch(std::move(j));
    }
    // Cancels a job that has not started; false if it started, finished or is unknown.
    virtual bool cancel(const JobId& id) = 0;
    virtual std::size_t outstanding() const = 0;
    // Called once this balancer has left the registry (its lease ran out): hands back every unfinished
    // job, for the execution manager to send through another balancer; later results for them are dropped.
    virtual std::vector<JobPtr> abandon() = 0;
};

// The results manager, as seen by a load balancer.
class ResultsSink {
public:
    virtual ~ResultsSink() = default;
    virtual void accept(Result result) = 0;
};

} // namespace dynexec
