// The load balancer: at each dispatch it asks the lookup registry which compute
// servers offer the job's service at that moment and sends the job to the most
// eligible one by its policy. It owns the table of jobs in flight, so when a
// server's lease ends it re-dispatches that server's jobs, failing a job that
// has been on `max_attempts` vanished servers. Thread-safe.
#pragma once

#include "balancer/policies.hpp"
#include "registry/lookup_registry.hpp"

#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace dynexec {

struct BalancerStats {
    std::uint64_t dispatched = 0;   // dispatches, re-dispatches included
    std::uint64_t redispatched = 0; // after a server vanished
    std::uint64_t lost = 0;         // failed after max_attempts vanished servers
    std::uint64_t stale = 0;        // late results from servers given up on, dropped
    std::size_t waiting = 0;        // jobs no live server offers a service for, yet
};

class LoadBalancer final : public LoadBalancerProxy,
                           public CompletionSink,
                           public std::enable_shared_from_this<LoadBalancer> {
public:
    struct Options {
        std::string policy = "power_of_two";
        int max_attempts = 3;
        std::uint64_t seed = 0;
    };

    // Subscribes to `registry` for joins and leaves; results go to `results`.
    static std::shared_ptr<LoadBalancer> create(LookupRegistry& registry, std::shared_ptr<ResultsSink> results,
                                                Options options);
    ~LoadBalancer() override;

    void dispatch(JobPtr job) override;
    bool cancel(const JobId& id) override;
    std::size_t outstanding() const override;
    void complete(Result result, int attempt) override;
    std::vector<JobPtr> abandon() override;

    // Cancels every job that has not started; returns how many.
    std::size_t cancel_all();
    BalancerStats stats() const;
    std::string_view policy() const { return policy_->name(); }

private:
    LoadBalancer(LookupRegistry& registry, std::shared_ptr<ResultsSink> results, Options options);
    void on_event(const RegistryEvent& ev);
    // Sends `job` to a server, or parks it; returns results to deliver (a job given up on). Needs mu_.
    void assign_locked(const JobPtr& job, int attempt, std::vector<Result>& out);
    void deliver(std::vector<Result>& results);

    struct Assignment {
        JobPtr job;
        std::string server;
        std::vector<std::string> vanished; // servers it was on that left
    };

    LookupRegistry& registry_;
    std::shared_ptr<ResultsSink> results_;
    Options options_;
    int subscription_ = 0;

    mutable std::mutex mu_;
    std::unique_ptr<Policy> policy_;
    std::unordered_map<JobId, Assignment> jobs_;
    std::unordered_map<std::string, std::uint32_t> outstanding_; // per server
    std::deque<JobPtr> waiting_;
    BalancerStats stats_;
    bool abandoned_ = false;
};

} // namespace dynexec
