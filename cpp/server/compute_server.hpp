// A compute server: runs jobs on its own oneTBB task_arena, at most `slots` at
// a time (each job may use the arena's threads for parallelism inside), and
// keeps the statistics the balancer chooses by. Thread-safe.
#pragma once

#include "registry/proxies.hpp"
#include "server/output_capture.hpp"
#include "services/catalog.hpp"

#include <tbb/concurrent_queue.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace dynexec {

class ComputeServer final : public ComputeServerProxy {
public:
    struct Options {
        unsigned slots = 1;   // jobs at once
        unsigned threads = 0; // arena concurrency; 0 = every core
        CaptureOptions capture; // each job's stdout/stderr (server processes only)
        double stop_grace = 2.0; // seconds a native service asked to stop has to return before it is abandoned
    };

    ComputeServer(Options options, const ServiceCatalog& catalog);
    ~ComputeServer() override; // waits for the jobs it holds

    void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) override;
    void stop(const JobId& id, int attempt, Status why) override;
    ServerStats stats() const override;
    unsigned slots() const override { return options_.slots; }

    // Stops the jobs past their time limit, and gives up on those asked to stop that did not: their result
    // (killed, timeout) is sent now and what they return later is dropped. Python jobs cannot be asked, so
    // they are given up on at once. Returns how many given-up jobs are still running on a thread here:
    // a server process with any should end (its supervisor starts another). Call it now and then.
    std::size_t enforce();

    // The registry ID that results are stamped with.
    void set_id(std::string id);
    const std::string& id() const { return id_; }
    // Blocks until nothing is queued or running here.
    void wait_idle();

private:
    struct Item {
        JobPtr job;
        int attempt;
        std::shared_ptr<CompletionSink> sink;
    };
    // A job running here.
    struct Running {
        JobPtr job;
        int attempt = 0;
        std::shared_ptr<CompletionSink> sink;
        TimePoint started, stop_asked;
        double start_wall = 0;
        Status stop = Status::ok; // what it was asked to stop for
        bool given_up = false;    // its result was sent; what it returns is dropped
    };
    void pump();
    void execute(Item& item);
    // A result with what the job says of itself filled in.
    Result result_of(const Job& job) const;
    // The result of a job stopped before it returned. Needs mu_.
    Result stopped_result(const Running& r) const;
    // Marks a stop request; returns the result to send now if the job is given up on at once. Needs mu_.
    std::optional<Result> stop_locked(Running& r, Status why, TimePoint now);

    Options options_;
    const ServiceCatalog& catalog_;
    std::string id_;
    tbb::task_arena arena_;
    tbb::concurrent_queue<Item> queue_;
    mutable std::mutex mu_; // statistics, pumps and idleness
    unsigned pumps_ = 0;   // tasks draining queue_, at most slots
    std::condition_variable idle_;
    ServerStats stats_;
    std::unordered_map<const Job*, Running> running_; // guarded by mu_
    std::size_t given_up_running_ = 0;                // given up on, still on a thread here; guarded by mu_
    std::unique_ptr<OutputCapture> capture_; // null: output is not captured
};

} // namespace dynexec
