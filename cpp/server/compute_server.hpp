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
#include <string>

namespace dynexec {

class ComputeServer final : public ComputeServerProxy {
public:
    struct Options {
        unsigned slots = 1;   // jobs at once
        unsigned threads = 0; // arena concurrency; 0 = every core
        CaptureOptions capture; // each job's stdout/stderr (server processes only)
    };

    ComputeServer(Options options, const ServiceCatalog& catalog);
    ~ComputeServer() override; // waits for the jobs it holds

    void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) override;
    ServerStats stats() const override;
    unsigned slots() const override { return options_.slots; }

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
    void pump();
    void execute(Item& item);

    Options options_;
    const ServiceCatalog& catalog_;
    std::string id_;
    tbb::task_arena arena_;
    tbb::concurrent_queue<Item> queue_;
    mutable std::mutex mu_; // statistics, pumps and idleness
    unsigned pumps_ = 0;   // tasks draining queue_, at most slots
    std::condition_variable idle_;
    ServerStats stats_;
    std::unique_ptr<OutputCapture> capture_; // null: output is not captured
};

} // namespace dynexec
