// The execution manager: the single entry point for jobs. It validates a job
// against the service's declared parameters, gives it a job ID, finds a load
// balancer through the lookup registry (starting one if none is registered,
// seed Fig. 2 block 450) and hands the job over. When a balancer's lease runs
// out, it sends that balancer's unfinished jobs through another. Thread-safe.
#pragma once

#include "common/job.hpp"
#include "registry/lookup_registry.hpp"

#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace dynexec {

class ExecutionManager {
public:
    // Starts a load balancer that registers itself with the registry.
    using BalancerStarter = std::function<void()>;

    ExecutionManager(LookupRegistry& registry, std::string session, BalancerStarter start_balancer);
    ~ExecutionManager();

    // Throws InvalidJob (UnknownService) on bad input; nothing is queued then.
    // `on_id` runs with the new ID before the job can run (to route its result).
    JobId submit(const std::string& service, const Params& params, const std::string& owner,
                 const JobOptions& options = {}, const std::function<void(const JobId&)>& on_id = {},
                 JobInfoPtr info = {});
    // Many jobs of one service in one hand-over to the balancer; all are validated before any is queued.
    // `infos`, if not empty, has one entry (possibly null) per job.
    std::vector<JobId> submit_many(const std::string& service, const std::vector<Params>& params, const std::string& owner,
                                   const JobOptions& options = {}, const std::vector<JobInfoPtr>& infos = {});
    // A job whose ID was reserved for a remote client (reserve_ids), as that client sent it.
    struct Reserved {
        JobId id;
        std::string service;
        Params params;
        JobOptions options;
        JobInfoPtr info; // null if none
    };
    // Queues each valid one (one hand-over to the balancer); returns the results of those refused.
    std::vector<Result> submit_reserved(std::vector<Reserved>&& jobs, const std::string& owner,
                                        const std::function<void(const JobId&)>& on_id);
    // Reserves `n` sequence numbers of this session's job IDs; returns the first.
    std::uint64_t reserve_ids(std::uint64_t n) { return ids_.reserve(n); }
    // Every service jobs are accepted for now.
    std::vector<ServicePtr> services() const;
    // Cancels a job that has not started yet: done(true) once it never will (see LoadBalancerProxy::cancel).
    void cancel(const JobId& id, std::function<void(bool)> done);
    bool cancel(const JobId& id); // waits for the answer
    std::vector<bool> cancel_many(const std::vector<JobId>& ids); // see LoadBalancerProxy::cancel_many
    // Stops a job (cancelled if not started, else status `why`); false if no balancer has it unfinished.
    bool kill(const JobId& id, Status why = Status::killed);
    // The state of an unfinished job; nullopt once finished (or unknown).
    std::optional<JobState> state(const JobId& id) const;
    // Fails every unfinished job (no compute server can be had); returns how many.
    std::size_t fail_all(const std::string& error_type, const std::string& message);

    // Services to accept jobs for even before a server offering them has registered (they wait for one).
    void know(const std::vector<ServicePtr>& services);

    const std::string& session() const { return ids_.session(); }
    std::uint64_t submitted() const { return submitted_; }

private:
    std::shared_ptr<LoadBalancerProxy> balancer();
    ServicePtr service(const std::string& name);
    JobPtr make(const ServiceDef& def, const std::string& service, const Params& params, const std::string& owner,
                const JobOptions& options);
    // The balancer holding `id` unfinished, if any.
    std::shared_ptr<LoadBalancerProxy> holder(const JobId& id) const;
    void take_over(std::shared_ptr<LoadBalancerProxy> gone);

    LookupRegistry& registry_;
    JobIdGenerator ids_;
    BalancerStarter start_balancer_;
    int subscription_ = 0;
    std::atomic<std::uint64_t> submitted_{0};

    mutable std::mutex mu_;
    // Every service a compute server has offered this session: a job for one
    // of them waits in the balancer while no server offers it, instead of failing.
    std::unordered_map<std::string, ServicePtr> known_;
    // The registry's answer to "which balancer?", kept until the registry changes or that lease may have ended.
    std::shared_ptr<LoadBalancerProxy> balancer_;
    std::uint64_t balancer_generation_ = 0;
    TimePoint balancer_valid_until_;
    // Take-overs run on their own threads: a registry listener may not start a balancer (it would join
    // the registry from inside its notification).
    std::vector<std::thread> takeovers_;
};

} // namespace dynexec
