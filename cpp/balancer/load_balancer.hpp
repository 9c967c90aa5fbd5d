// The load balancer: at each dispatch it asks the lookup registry which compute
// servers offer the job's service at that moment and sends the job to the most
// eligible one by its policy. It owns the table of jobs in flight, so when a
// server's lease ends it re-dispatches that server's jobs, failing a job that
// has been on `max_attempts` vanished servers. Each server holds at most its
// Capacity; the rest wait here, so a server that joins or frees a slot takes
// them and none sits idle while another has a queue. Thread-safe.
//
// It calls no compute server while it holds its lock: a decision made under
// the lock queues the calls it needs (run, revoke, stop) in one outbox, and the
// entry point sends them once the lock is released, in the order decided, so
// a server that calls back at once (a result, a revoke's answer) finds the
// balancer free. What the policy reads of a server (slots, statistics) is read
// before the lock is taken.
#pragma once

#include "balancer/capacity.hpp"
#include "balancer/policies.hpp"
#include "common/thread_annotations.hpp"
#include "registry/lookup_registry.hpp"

#include <deque>
#include <memory>
#include <thread>
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

    void dispatch(JobPtr job) override EXCLUDES(mu_);
    void dispatch(std::vector<JobPtr> jobs) override EXCLUDES(mu_);
    using LoadBalancerProxy::cancel;
    void cancel(const JobId& id, std::function<void(bool)> done) override EXCLUDES(mu_);
    std::vector<bool> cancel_many(const std::vector<JobId>& ids) override EXCLUDES(mu_);
    bool kill(const JobId& id, Status why) override EXCLUDES(mu_);
    std::optional<JobState> state(const JobId& id) const override EXCLUDES(mu_);
    Backlog backlog() const override EXCLUDES(mu_);
    std::size_t fail_all(const std::string& error_type, const std::string& message) override EXCLUDES(mu_);
    std::size_t outstanding() const override EXCLUDES(mu_);
    void complete(Result result, int attempt) override EXCLUDES(mu_);
    void revoked(const JobId& id, int attempt, bool ok) override EXCLUDES(mu_);
    std::vector<JobPtr> abandon() override EXCLUDES(mu_);

    // Cancels every job that has not started; returns how many.
    std::size_t cancel_all() EXCLUDES(mu_);
    BalancerStats stats() const EXCLUDES(mu_);
    std::string_view policy() const { return policy_name_; }

private:
    // This balancer's view of one compute server.
    struct Server {
        std::shared_ptr<ComputeServerProxy> proxy;
        unsigned slots = 1;            // read once, before the lock, when it was first seen (see Sightings)
        bool shares_jobs = true;       // likewise
        ServerStats stats;             // as its registry entry published them with its last renewal
        std::uint32_t outstanding = 0; // jobs it holds from this balancer
        double run_seconds = -1;       // moving average of its jobs' run time; negative until measured
        // What it was sent, oldest first, with the dispatch (attempt): stealing takes from the back.
        // Entries of jobs finished or moved since are dropped lazily.
        std::deque<std::pair<JobPtr, int>> sent;
    };
    std::uint32_t capacity(const Server& s) const REQUIRES(mu_);
    // Who offers one service: a cached lookup, valid until the registry changes or a lease it saw runs out.
    struct Offers {
        std::uint64_t generation = 0;
        TimePoint valid_until;
        bool complete = false; // false: a server in it was not seen yet (it joined a moment ago): look again
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

    // A call to a compute server, decided under the lock and made after it is released.
    struct Call {
        enum class What { run, revoke, stop } what;
        std::shared_ptr<ComputeServerProxy> proxy;
        JobPtr job;
        int attempt = 0;
        Status why = Status::ok; // for stop
    };
    // What this balancer knows of each registered server without asking it under the lock: its slots and
    // whether it shares Job objects, read once per server when the registry's generation moves on.
    struct Sighting {
        const ComputeServerProxy* proxy = nullptr; // identity only
        std::weak_ptr<ComputeServerProxy> weak;    // for polling statistics; never keeps a server alive
        unsigned slots = 1;
        bool shares_jobs = true;
    };
    struct Sightings {
        std::uint64_t generation = 0;
        std::unordered_map<std::string, Sighting> servers;
    };
    // What an entry point learns of the servers before it takes the lock.
    struct Probe {
        std::shared_ptr<const Sightings> sightings;
        std::unordered_map<std::string, ServerStats> stats; // polled, when the policy reads statistics
    };

    LoadBalancer(LookupRegistry& registry, std::shared_ptr<ResultsSink> results, Options options);
    void on_event(const RegistryEvent& ev) EXCLUDES(mu_);
    // Reads slots (of servers new since the last look) and statistics (if the policy wants them). Unlocked.
    Probe probe() EXCLUDES(mu_, sight_mu_);
    void absorb_locked(Probe& probe) REQUIRES(mu_);
    // Makes the calls in the outbox, oldest first, then returns. One thread at a time does: another that
    // finds it busy leaves its calls to it, which keeps them in the order decided. A call back into this
    // balancer from inside one (a server that answers at once) returns without making any, unless
    // `nested` (a cancel that must hear its answer before it returns), which makes them there.
    void flush(bool nested = false) EXCLUDES(mu_);
    // A revoke answered, whether now (a server in this process) or later through revoked(). Needs mu_.
    void revoked_locked(const JobId& id, int attempt, bool ok, std::vector<Result>& out, Answers& answers)
        REQUIRES(mu_);
    void dispatch_locked(JobPtr job) REQUIRES(mu_);
    // Sends `job` to the most eligible server with room; false if none has (it must wait). Needs mu_.
    bool place_locked(const JobPtr& job, int attempt, Assignment& a) REQUIRES(mu_);
    // A job given up on after max_attempts vanished servers; true if it was (its entry is gone). Needs mu_.
    bool give_up_locked(const JobPtr& job, Assignment& a, std::vector<Result>& out) REQUIRES(mu_);
    // Sends waiting jobs to servers with room. Needs mu_.
    void pump_locked() REQUIRES(mu_);
    // Its dispatch is over (finished, its server gone): cancel() calls waiting on a revoke hear false. Needs mu_.
    void refuse_cancels_locked(Assignment& a, Answers& answers) REQUIRES(mu_);
    // Puts a job that is on no server (again) at the front of its service's waiting queue. Needs mu_.
    void requeue_locked(Assignment& a, int attempt) REQUIRES(mu_);
    // Sends a job that is on no server to `server_id` (it has room and offers the service). Needs mu_.
    void send_locked(Assignment& a, const std::string& server_id, Server& server, int attempt) REQUIRES(mu_);
    // A cancelled job's entry goes, with its result. Needs mu_.
    void cancelled_locked(std::unordered_map<JobId, Assignment>::iterator it, std::vector<Result>& out)
        REQUIRES(mu_);
    // `thief` has room and nothing waits: asks the server with the longest queue to give up jobs queued
    // there (not started, as far as this balancer knows), newest first; each moves once it confirms. Needs mu_.
    void steal_locked(const std::string& thief_id, Server& thief) REQUIRES(mu_);
    // Notes that `server` was sent this dispatch (a candidate for stealing). Needs mu_.
    void remember_locked(std::string_view server_id, Server& server, const JobPtr& job, int attempt) REQUIRES(mu_);
    // True if `entry` is still the current dispatch of its job to `server_id`. Needs mu_.
    bool current_locked(const std::pair<JobPtr, int>& entry, const std::string& server_id) const REQUIRES(mu_);
    const Offers& offers_locked(const std::string& service) REQUIRES(mu_);
    // This balancer's entry for a registered server, made on first sight; null for one not probed yet. Needs mu_.
    std::pair<const std::string, Server>* server_locked(const Entry& e) REQUIRES(mu_);
    void deliver(std::vector<Result>& results, Answers& answers) EXCLUDES(mu_);

    LookupRegistry& registry_;
    std::shared_ptr<ResultsSink> results_;
    Options options_;
    int subscription_ = 0;

    mutable Mutex mu_;
    std::unique_ptr<Policy> policy_ PT_GUARDED_BY(mu_);
    const std::string_view policy_name_; // a literal of the policy's
    const bool needs_stats_;
    std::unordered_map<JobId, Assignment> jobs_ GUARDED_BY(mu_);
    std::unordered_map<std::string, Server> servers_ GUARDED_BY(mu_); // by registry id; node addresses are stable
    std::unordered_map<std::string, Offers> offers_ GUARDED_BY(mu_);  // by service
    // By service, oldest first. An entry's Assignment lives in jobs_ (node addresses are stable) unless the
    // job was cancelled, which its state says before the pointer is touched.
    std::unordered_map<std::string, std::deque<std::pair<JobPtr, Assignment*>>> waiting_ GUARDED_BY(mu_);
    std::size_t waiting_count_ GUARDED_BY(mu_) = 0;
    // Moving average over every server: a server not measured yet is like the others.
    double run_seconds_ GUARDED_BY(mu_) = -1;
    std::vector<Candidate> candidates_ GUARDED_BY(mu_); // scratch
    std::vector<Server*> chosen_ GUARDED_BY(mu_);       // scratch, beside candidates_
    BalancerStats stats_ GUARDED_BY(mu_);
    bool abandoned_ GUARDED_BY(mu_) = false;
    std::deque<Call> outbox_ GUARDED_BY(mu_);      // decided, not made yet, oldest first
    std::thread::id flusher_ GUARDED_BY(mu_);      // the thread making them; none if default
    std::shared_ptr<const Sightings> seen_ GUARDED_BY(mu_); // the newest probe's, as decisions use them
    std::unordered_map<std::string, ServerStats> polled_ GUARDED_BY(mu_); // the newest probe's statistics
    mutable Mutex sight_mu_; // a leaf: guards only the pointer below
    std::shared_ptr<const Sightings> sightings_ GUARDED_BY(sight_mu_);
};

} // namespace dynexec
