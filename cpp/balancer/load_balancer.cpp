#include "balancer/load_balancer.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace dynexec {

std::shared_ptr<LoadBalancer> LoadBalancer::create(LookupRegistry& registry, std::shared_ptr<ResultsSink> results,
                                                   Options options) {
    std::shared_ptr<LoadBalancer> lb(new LoadBalancer(registry, std::move(results), std::move(options)));
    std::weak_ptr<LoadBalancer> weak = lb;
    lb->subscription_ = registry.subscribe([weak](const RegistryEvent& ev) {
        if (auto self = weak.lock()) self->on_event(ev);
    });
    return lb;
}

LoadBalancer::LoadBalancer(LookupRegistry& registry, std::shared_ptr<ResultsSink> results, Options options)
    : registry_(registry), results_(std::move(results)), options_(std::move(options)),
      policy_(make_policy(options_.policy, options_.seed)) {
    if (options_.max_attempts < 1)
        throw std::invalid_argument(fmt::format("max_attempts must be at least 1, got {}", options_.max_attempts));
}

LoadBalancer::~LoadBalancer() { registry_.unsubscribe(subscription_); }

void LoadBalancer::dispatch(JobPtr job) {
    std::vector<Result> out;
    {
        std::lock_guard lk(mu_);
        if (abandoned_) throw std::logic_error("dispatch to a load balancer that has left the registry");
        jobs_[job->id] = {job, "", {}};
        // A job handed over from another balancer continues its attempt count: older dispatches die.
        assign_locked(job, job->attempt() + 1, out);
    }
    deliver(out);
}

std::vector<JobPtr> LoadBalancer::abandon() {
    std::lock_guard lk(mu_);
    abandoned_ = true;
    std::vector<JobPtr> jobs;
    for (auto& [id, a] : jobs_) jobs.push_back(a.job);
    jobs_.clear();
    outstanding_.clear();
    waiting_.clear();
    return jobs;
}

void LoadBalancer::assign_locked(const JobPtr& job, int attempt, std::vector<Result>& out) {
    auto& a = jobs_.at(job->id);
    if (int(a.vanished.size()) >= options_.max_attempts) {
        out.push_back(result_without_run(
            *job, Status::lost, "ServerLostError",
            fmt::format("job {} was running on {} compute server(s) that vanished ({}); gave up after max_attempts={}",
                        job->id, a.vanished.size(), fmt::join(a.vanished, ", "), options_.max_attempts)));
        out.back().attempts = attempt - 1; // dispatches made
        jobs_.erase(job->id);
        ++stats_.lost;
        return;
    }
    auto servers = registry_.lookup(Kind::compute_server, job->service);
    if (servers.empty()) {
        job->requeue(attempt);
        a.server.clear();
        waiting_.push_back(job);
        return;
    }
    std::vector<Candidate> candidates;
    candidates.reserve(servers.size());
    for (auto& s : servers) {
        auto it = outstanding_.find(s.id);
        candidates.push_back({s.id, s.server->stats(), it == outstanding_.end() ? 0u : it->second, s.server->slots()});
    }
    auto& chosen = servers[policy_->choose(candidates)];
    job->requeue(attempt);
    a.server = chosen.id;
    ++outstanding_[chosen.id];
    ++stats_.dispatched;
    chosen.server->run(job, attempt, shared_from_this());
}

void LoadBalancer::on_event(const RegistryEvent& ev) {
    if (ev.entry.kind != Kind::compute_server) return;
    std::vector<Result> out;
    {
        std::lock_guard lk(mu_);
        if (abandoned_) return;
        if (ev.what == RegistryEvent::What::joined) {
            // A new server gets the jobs that were waiting for one at once.
            std::deque<JobPtr> waiting;
            waiting.swap(waiting_);
            for (auto& job : waiting) assign_locked(job, job->attempt(), out);
        } else {
            std::vector<JobPtr> orphans;
            for (auto& [id, a] : jobs_)
                if (a.server == ev.entry.id) orphans.push_back(a.job);
            outstanding_.erase(ev.entry.id);
            for (auto& job : orphans) {
                jobs_.at(job->id).vanished.push_back(ev.entry.id);
                ++stats_.redispatched;
                assign_locked(job, job->attempt() + 1, out);
            }
        }
    }
    deliver(out);
}

void LoadBalancer::complete(Result result, int attempt) {
    {
        std::lock_guard lk(mu_);
        auto it = jobs_.find(result.job_id);
        // (job, attempt) names one dispatch: any other is from a server given up on.
        if (it == jobs_.end() || it->second.job->attempt() != attempt) {
            ++stats_.stale; // the job was re-dispatched: this server's result is not the one we keep
            return;
        }
        if (auto c = outstanding_.find(it->second.server); c != outstanding_.end() && c->second > 0) --c->second;
        result.server = it->second.server;
        jobs_.erase(it);
    }
    result.attempts = attempt;
    results_->accept(std::move(result));
}

bool LoadBalancer::cancel(const JobId& id) {
    Result r;
    {
        std::lock_guard lk(mu_);
        auto it = jobs_.find(id);
        if (it == jobs_.end() || !it->second.job->try_cancel()) return false;
        if (auto c = outstanding_.find(it->second.server); c != outstanding_.end() && c->second > 0) --c->second;
        std::erase(waiting_, it->second.job);
        r = result_without_run(*it->second.job, Status::cancelled, "CancelledError", "cancelled before it started");
        jobs_.erase(it);
    }
    results_->accept(std::move(r));
    return true;
}

std::size_t LoadBalancer::cancel_all() {
    std::vector<JobId> ids;
    {
        std::lock_guard lk(mu_);
        for (auto& [id, a] : jobs_) ids.push_back(id);
    }
    std::size_t n = 0;
    for (auto& id : ids) n += cancel(id);
    return n;
}

std::size_t LoadBalancer::outstanding() const {
    std::lock_guard lk(mu_);
    return jobs_.size();
}

BalancerStats LoadBalancer::stats() const {
    std::lock_guard lk(mu_);
    auto s = stats_;
    s.waiting = waiting_.size();
    return s;
}

void LoadBalancer::deliver(std::vector<Result>& results) {
    for (auto& r : results) results_->accept(std::move(r));
}

} // namespace dynexec
