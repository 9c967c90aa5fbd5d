// What the lookup registry hands out: one proxy per registered entity. Here
// every proxy is the component itself (a direct call); a remote proxy will
// implement the same interface by sending messages to another process.
#pragma once

#include "common/job.hpp"

#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <memory>
#include <vector>

namespace dynexec {

struct ServerStats {
    std::uint64_t jobs_done = 0;
    double busy_time = 0;       // seconds spent running jobs
    double last_completion = 0; // wall seconds of the last completion; 0 = never
    std::uint32_t in_flight = 0; // queued on the server or running
};

// The unfinished jobs of a balancer, as a status display shows them.
struct ServiceCount {
    std::string service;
    std::uint64_t jobs = 0;
};
struct Backlog {
    std::uint64_t running = 0, queued = 0; // on compute servers: started, not yet started
    std::vector<ServiceCount> waiting;     // in the balancer, by service: no server with room offers it
};

// Where a compute server sends each finished job. `attempt` identifies the
// dispatch, so that a late result from a server that was given up on is dropped.
class CompletionSink {
public:
    virtual ~CompletionSink() = default;
    virtual void complete(Result result, int attempt) = 0;
    // The server is starting dispatch `attempt` (called before the job runs).
    virtual void started(const JobId& /*id*/, int /*attempt*/) {}
    // A server in another process answers ComputeServerProxy::revoke: `ok` = that dispatch never starts there.
    virtual void revoked(const JobId& /*id*/, int /*attempt*/, bool /*ok*/) {}
};

// A balancer calls these holding no lock of its own, so any of them may call the sink back before it
// returns (a result, a revoke's answer) or query the balancer.
class ComputeServerProxy {
public:
    virtual ~ComputeServerProxy() = default;
    // Queues `job` (attempt number `attempt`); the result goes to `sink`. Never blocks on the job.
    virtual void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) = 0;
    virtual ServerStats stats() const = 0;
    virtual unsigned slots() const = 0; // jobs it runs at once; fixed for its life (a balancer reads it once)
    // Asks that dispatch `attempt` of `job` never start here (to cancel it or move it). A server sharing the
    // Job object answers now: true if it will never start. One in another process answers later, through
    // the sink's revoked(), and this returns nullopt.
    virtual std::optional<bool> revoke(const JobPtr& job, int attempt) { return job->try_revoke(attempt); }
    // Stops dispatch `attempt` of a job it holds: a running one ends with status `why` (killed, timeout), a
    // queued one never starts (cancelled). Its result comes back through the sink as usual.
    virtual void stop(const JobId& id, int attempt, Status why) = 0;
    // True if it runs the balancer's own Job objects (in this process): their state is exact. One in another
    // process tells of each start in a message, which a crash may lose. Fixed for its life, like slots().
    virtual bool shares_jobs() const { return true; }
};

class LoadBalancerProxy {
public:
    virtual ~LoadBalancerProxy() = default;
    virtual void dispatch(JobPtr job) = 0;
    virtual void dispatch(std::vector<JobPtr> jobs) {
        for (auto& j : jobs) dispatch(std::move(j));
    }
    // Cancels a job that has not started: done(true) once it never will, done(false) if it started,
    // finished or is unknown here. `done` runs on this thread or, when a server in another process must
    // confirm, on the thread that hears its answer; never under the balancer's lock.
    virtual void cancel(const JobId& id, std::function<void(bool)> done) = 0;
    // The same, waiting for the answer.
    bool cancel(const JobId& id);
    // Many at once, waiting for the answers: those waiting in the balancer go first, under one hold of its
    // lock, so that none of them is sent to a server meanwhile.
    virtual std::vector<bool> cancel_many(const std::vector<JobId>& ids) {
        std::vector<bool> out;
        for (auto& id : ids) out.push_back(cancel(id));
        return out;
    }
    // Stops a job: one not started yet is cancelled, a running one ends with status `why` (killed, timeout).
    // False if it is not one of this balancer's unfinished jobs.
    virtual bool kill(const JobId& id, Status why) = 0;
    // The state of one of its unfinished jobs (running once a server has said it started); nullopt if unknown.
    virtual std::optional<JobState> state(const JobId& id) const = 0;
    virtual Backlog backlog() const { return {}; }
    // Fails every unfinished job with status lost and this error (no compute server can be had).
    virtual std::size_t fail_all(const std::string& error_type, const std::string& message) = 0;
    virtual std::size_t outstanding() const = 0;
    // Called once this balancer has left the registry (its lease ran out): hands back every unfinished
    // job, for the execution manager to send through another balancer; later results for them are dropped.
    virtual std::vector<JobPtr> abandon() = 0;
};

inline bool LoadBalancerProxy::cancel(const JobId& id) {
    auto answer = std::make_shared<std::promise<bool>>();
    auto got = answer->get_future();
    cancel(id, [answer](bool ok) { answer->set_value(ok); });
    return got.get();
}

// The results manager, as seen by a load balancer.
class ResultsSink {
public:
    virtual ~ResultsSink() = default;
    virtual void accept(Result result) = 0;
};

} // namespace dynexec
