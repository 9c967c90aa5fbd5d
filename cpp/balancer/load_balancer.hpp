// The load balancer: at each dispatch it asks the lookup registry which compute
// servers offer the job's service at that moment and sends the job to the most
// eligible one by its policy. It owns the table of jobs in flight, so when a
// server's lease ends it re-dispatches that server's jobs, failing a job that
// has been on `max_attempts` vanished servers. Each server holds at most its
// Capacity; the rest wait here, so a server that joins or frees a slot takes
// them and none sits idle while another has a queue. Thread-safe.
#pragma once

#include "balancer/capacity.hpp"
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
    std::uint64_t stolen = 0;       // queued jobs moved to a server with room (once it confirmed they had not started)
    std::uint64_t retried = 0;      // jobs run again after an error (JobOptions::retries)
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
    void dispatch(std::vector<JobPtr> jobs) override;
    using LoadBalancerProxy::cancel;
    void cancel(const JobId& id, std::function<void(bool)> done) override;
    std::vector<bool> cancel_many(const std::vector<JobId>& ids) override;
    bool kill(const JobId& id, Status why) override;
    std::optional<JobState> state(const JobId& id) const override;
    Backlog backlog() const override;
    std::size_t fail_all(const std::string& error_type, const std::string& message) override;
    std::size_t outstanding() const override;
    void complete(Result result, int attempt) override;
    void revoked(const JobId& id, int attempt, bool ok) override;
    std::vector<JobPtr> abandon() override;

    // Cancels every job that has not started; returns how many.
    std::size_t cancel_all();
    BalancerStats stats() const;
    std::string_view policy() const { return policy_->name(); }

private:
    // This balancer's view of one compute server.
    struct Server {
        std::shared_ptr<ComputeServerProxy> proxy;
        unsigned slots = 1;
        std::uint32_t outstanding = 0; // jobs it holds from this balancer
        double run_seconds = -1;       // moving average of its jobs' run time; negative until measured
        // What it was sent, oldest first, with the dispatch (attempt): stealing takes from the back.
        // Entries of jobs finished or moved since are dropped lazily.
        std::deque<std::pair<JobPtr, int>> sent;
    };
    std::uint32_t capacity(const Server& s) const;
    // Who offers one service: a cached lookup, valid until the registry changes or a lease it saw runs out.
    struct Offers {
        std::uint64_t generation = 0;
        TimePoint valid_until;
        std::vector<std::pair<std::string, Server*>> servers;
    };
    struct Assignment {
        JobPtr job;
        std::string server;                // empty while it waits in the balancer
        std::vector<std::string> vanished; // servers that ended while running it, and how (max_attempts counts them)
        int starts = 0;                    // starts of earlier dispatches that happened (or may have: its server died)
        int retried = 0;                   // runs again after an error
        int revoking = 0;                  // the dispatch a revoke was sent for, unanswered; 0 = none
        std::string thief;                 // the server that asked for it, when the revoke is a steal
        std::vector<std::function<void(bool)>> cancels; // cancel() calls waiting for that answer
        Status stop = Status::ok;          // killed or timeout once kill() asked; ok = not asked
        bool died = false;                 // one of those servers' processes ended (not just its lease)
    };
    using Answers = std::vector<std::pair<std::function<void(bool)>, bool>>; // cancel callbacks to run unlocked

    LoadBalancer(LookupRegistry& registry, std::shared_ptr<ResultsSink> results, Options options);
    void on_event(const RegistryEvent& ev);
    void dispatch_locked(JobPtr job);
    // Sends `job` to the most eligible server with room; false if none has (it must wait). Needs mu_.
    bool place_locked(const JobPtr& job, int attempt, Assignment& a);
    // A job given up on after max_attempts vanished servers; true if it was (its entry is gone). Needs mu_.
    bool give_up_locked(const JobPtr& job, Assignment& a, std::vector<Result>& out);
    // Sends waiting jobs to servers with room. Needs mu_.
    void pump_locked();
    // Its dispatch is over (finished, its server gone): cancel() calls waiting on a revoke hear false. Needs mu_.
    void refuse_cancels_locked(Assignment& a, Answers& answers);
    // Puts a job that is on no server (again) at the front of its service's waiting queue. Needs mu_.
    void requeue_locked(Assignment& a, int attempt);
    // Sends a job that is on no server to `server_id` (it has room and offers the service). Needs mu_.
    void send_locked(Assignment& a, const std::string& server_id, Server& server, int attempt);
    // A cancelled job's entry goes, with its result. Needs mu_.
    void cancelled_locked(std::unordered_map<JobId, Assignment>::iterator it, std::vector<Result>& out);
    // `thief` has room and nothing waits: moves to it jobs queued (not started, as far as this balancer
    // knows) on the server with the longest queue, newest first. Needs mu_.
    void steal_locked(const std::string& thief_id, Server& thief);
    // Notes that `server` was sent this dispatch (a candidate for stealing). Needs mu_.
    void remember_locked(std::string_view server_id, Server& server, const JobPtr& job, int attempt);
    // True if `entry` is still the current dispatch of its job to `server_id`. Needs mu_.
    bool current_locked(const std::pair<JobPtr, int>& entry, const std::string& server_id) const;
    const Offers& offers_locked(const std::string& service);
    // This balancer's entry for a registered server, made on first sight. Needs mu_.
    std::pair<const std::string, Server>& server_locked(const Entry& e);
    void deliver(std::vector<Result>& results, Answers& answers);

    LookupRegistry& registry_;
    std::shared_ptr<ResultsSink> results_;
    Options options_;
    int subscription_ = 0;

    mutable std::mutex mu_;
    std::unique_ptr<Policy> policy_;
    std::unordered_map<JobId, Assignment> jobs_;
    std::unordered_map<std::string, Server> servers_;      // by registry id; node addresses are stable
    std::unordered_map<std::string, Offers> offers_;       // by service
    // By service, oldest first. An entry's Assignment lives in jobs_ (node addresses are stable) unless the
    // job was cancelled, which its state says before the pointer is touched.
    std::unordered_map<std::string, std::deque<std::pair<JobPtr, Assignment*>>> waiting_;
    std::size_t waiting_count_ = 0;
    double run_seconds_ = -1; // moving average over every server: a server not measured yet is like the others
    std::vector<Candidate> candidates_; // scratch
    std::vector<Server*> chosen_;       // scratch, beside candidates_
    BalancerStats stats_;
    bool abandoned_ = false;
};

} // namespace dynexec
