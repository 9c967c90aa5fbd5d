#include "balancer/load_balancer.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace dynexec {

std::uint32_t LoadBalancer::capacity(const Server& s) const {
    return Capacity::of(s.slots, s.run_seconds >= 0 ? s.run_seconds : run_seconds_);
}

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
    std::lock_guard lk(mu_);
    dispatch_locked(std::move(job));
}

void LoadBalancer::dispatch(std::vector<JobPtr> jobs) {
    std::lock_guard lk(mu_);
    for (auto& job : jobs) dispatch_locked(std::move(job));
}

void LoadBalancer::dispatch_locked(JobPtr job) {
    if (abandoned_) throw std::logic_error("dispatch to a load balancer that has left the registry");
    auto& a = jobs_[job->id];
    a = {job, "", {}};
    // A job handed over from another balancer continues its attempt count: older dispatches die.
    int attempt = job->attempt() + 1;
    auto queue = waiting_.find(job->service); // a queue exists only while jobs of its service wait
    if (queue == waiting_.end() && place_locked(job, attempt, a)) return;
    if (queue == waiting_.end()) queue = waiting_.try_emplace(job->service).first;
    job->requeue(attempt);
    queue->second.emplace_back(std::move(job), &a); // behind those of its service already waiting
    ++waiting_count_;
}

std::vector<JobPtr> LoadBalancer::abandon() {
    std::lock_guard lk(mu_);
    abandoned_ = true;
    std::vector<JobPtr> jobs;
    for (auto& [id, a] : jobs_) jobs.push_back(a.job);
    jobs_.clear();
    servers_.clear();
    offers_.clear();
    waiting_.clear();
    waiting_count_ = 0;
    return jobs;
}

const LoadBalancer::Offers& LoadBalancer::offers_locked(const std::string& service) {
    auto& o = offers_[service];
    auto generation = registry_.generation();
    if (o.generation == generation && registry_.clock().now() < o.valid_until) return o;
    // The registry changed, or a lease we saw may have run out: look again (renewals move valid_until on).
    o.servers.clear();
    o.generation = generation;
    o.valid_until = TimePoint::max();
    for (auto& e : registry_.lookup(Kind::compute_server, service)) {
        auto& [id, server] = server_locked(e);
        o.servers.emplace_back(id, &server);
        o.valid_until = std::min(o.valid_until, e.expiry);
    }
    return o;
}

std::pair<const std::string, LoadBalancer::Server>& LoadBalancer::server_locked(const Entry& e) {
    auto [it, fresh] = servers_.try_emplace(e.id);
    if (fresh) it->second.proxy = e.server;
    it->second.slots = std::max(1u, e.server->slots());
    return *it;
}

bool LoadBalancer::give_up_locked(const JobPtr& job, int attempt, Assignment& a, std::vector<Result>& out) {
    if (int(a.vanished.size()) < options_.max_attempts) return false;
    out.push_back(result_without_run(
        *job, Status::lost, "ServerLostError",
        fmt::format("job {} was running on {} compute server(s) that vanished ({}); gave up after max_attempts={}",
                    job->id, a.vanished.size(), fmt::join(a.vanished, ", "), options_.max_attempts)));
    out.back().attempts = attempt - 1; // dispatches made
    jobs_.erase(job->id);
    ++stats_.lost;
    return true;
}

bool LoadBalancer::place_locked(const JobPtr& job, int attempt, Assignment& a) {
    auto& offers = offers_locked(job->service);
    candidates_.clear();
    chosen_.clear();
    for (std::size_t order = 0; order < offers.servers.size(); ++order) {
        auto& [id, s] = offers.servers[order];
        if (s->outstanding >= capacity(*s)) continue;
        candidates_.push_back(
            {id, policy_->needs_stats() ? s->proxy->stats() : ServerStats{}, s->outstanding, s->slots, order});
        chosen_.push_back(s);
    }
    if (candidates_.empty()) return false;
    std::size_t i = policy_->choose(candidates_);
    auto& server = *chosen_[i];
    job->requeue(attempt);
    a.server = candidates_[i].id;
    ++server.outstanding;
    ++stats_.dispatched;
    remember_locked(candidates_[i].id, server, job, attempt);
    server.proxy->run(job, attempt, shared_from_this());
    return true;
}

void LoadBalancer::remember_locked(std::string_view server_id, Server& server, const JobPtr& job, int attempt) {
    server.sent.emplace_back(job, attempt);
    // Finished jobs leave from the front only: behind a long one they pile up. Past twice what could still
    // be taken, drop them all (amortised: the next sweep comes only once as many have been sent again).
    if (server.sent.size() > 2 * (std::size_t(server.outstanding) + 64)) {
        std::string id(server_id);
        std::erase_if(server.sent, [&](auto& entry) { return !current_locked(entry, id); });
    }
}

bool LoadBalancer::current_locked(const std::pair<JobPtr, int>& entry, const std::string& server_id) const {
    auto& [job, attempt] = entry;
    if (job->attempt() != attempt || job->state() != JobState::queued) return false;
    auto it = jobs_.find(job->id);
    return it != jobs_.end() && it->second.server == server_id;
}

void LoadBalancer::steal_locked(const std::string& thief_id, Server& thief) {
    // The victim: the server with the most jobs beyond its slots (queued there, not running).
    Server* victim = nullptr;
    const std::string* victim_id = nullptr;
    for (auto& [id, s] : servers_)
        if (&s != &thief && s.outstanding > s.slots &&
            (!victim || s.outstanding - s.slots > victim->outstanding - victim->slots)) {
            victim = &s;
            victim_id = &id;
        }
    if (!victim) return;
    // Half of its queue at most, so that two servers never trade the same jobs back and forth.
    std::uint32_t want = std::min(capacity(thief) - std::min(capacity(thief), thief.outstanding),
                                  (victim->outstanding - victim->slots + 1) / 2);
    while (want > 0 && !victim->sent.empty()) {
        auto entry = std::move(victim->sent.back());
        victim->sent.pop_back();
        if (!current_locked(entry, *victim_id)) continue;
        auto& [job, attempt] = entry;
        auto& offers = offers_locked(job->service);
        bool offered = std::any_of(offers.servers.begin(), offers.servers.end(),
                                   [&](auto& o) { return o.second == &thief; });
        if (!offered) { // the thief cannot run it: leave it where it is
            victim->sent.push_back(std::move(entry));
            break;
        }
        --victim->outstanding;
        victim->proxy->revoke(job->id, attempt);
        job->requeue(attempt + 1); // the victim's dispatch can no longer start here, nor report
        jobs_.at(job->id).server = thief_id;
        ++thief.outstanding;
        ++stats_.dispatched;
        ++stats_.stolen;
        remember_locked(thief_id, thief, job, attempt + 1);
        thief.proxy->run(job, attempt + 1, shared_from_this());
        --want;
    }
}

void LoadBalancer::pump_locked() {
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        auto& queue = it->second;
        while (!queue.empty()) {
            auto& [job, a] = queue.front();
            // Cancelled while waiting (cancel() counted it out already), or placed: either way it leaves.
            if (job->state() != JobState::cancelled) {
                if (!place_locked(job, job->attempt(), *a)) break;
                --waiting_count_;
            }
            queue.pop_front();
        }
        it = queue.empty() ? waiting_.erase(it) : std::next(it);
    }
}

void LoadBalancer::on_event(const RegistryEvent& ev) {
    if (ev.entry.kind != Kind::compute_server) return;
    std::vector<Result> out;
    {
        std::lock_guard lk(mu_);
        if (abandoned_) return;
        if (ev.what == RegistryEvent::What::left) {
            std::vector<JobPtr> orphans;
            for (auto& [id, a] : jobs_)
                if (a.server == ev.entry.id) orphans.push_back(a.job);
            servers_.erase(ev.entry.id);
            offers_.clear(); // they point into servers_
            // Orphans go first: they were submitted before anything still waiting.
            std::sort(orphans.begin(), orphans.end(), [](auto& x, auto& y) { return x->submit_time > y->submit_time; });
            for (auto& job : orphans) {
                auto& a = jobs_.at(job->id);
                a.vanished.push_back(ev.entry.id);
                a.server.clear();
                ++stats_.redispatched;
                int attempt = job->attempt() + 1;
                if (give_up_locked(job, attempt, a, out)) continue;
                job->requeue(attempt); // the vanished server's dispatch can no longer start or report
                waiting_[job->service].emplace_front(job, &a);
                ++waiting_count_;
            }
        }
        // A join, a leave or new services: waiting jobs may have somewhere to go now.
        pump_locked();
        // A newcomer with nothing to take from the waiting jobs takes from the longest queue.
        if (ev.what == RegistryEvent::What::joined && !waiting_count_) {
            auto& [id, server] = server_locked(ev.entry);
            steal_locked(id, server);
        }
    }
    deliver(out);
}

void LoadBalancer::complete(Result result, int attempt) {
    {
        std::lock_guard lk(mu_);
        auto it = jobs_.find(result.job_id);
        // (job, attempt) names one dispatch: any other is from a server given up on.
        if (it == jobs_.end() || it->second.job->attempt() != attempt || it->second.server.empty()) {
            ++stats_.stale; // the job was re-dispatched: this server's result is not the one we keep
            return;
        }
        auto s = servers_.find(it->second.server);
        if (s != servers_.end()) {
            if (s->second.outstanding > 0) --s->second.outstanding;
            auto& sent = s->second.sent; // drop what has finished from the front, keep the rest in order
            while (!sent.empty() && (sent.front().first == it->second.job || !current_locked(sent.front(), s->first)))
                sent.pop_front();
            if (result.start_time > 0 && result.end_time >= result.start_time) {
                double run = result.end_time - result.start_time;
                s->second.run_seconds = Capacity::average(s->second.run_seconds, run);
                run_seconds_ = Capacity::average(run_seconds_, run);
            }
        }
        result.server = it->second.server;
        jobs_.erase(it);
        if (waiting_count_) pump_locked();
        // A server about to idle while another has a queue takes some of it (a slot left free costs more
        // than a move); one that still has work queued steals nothing.
        if (!waiting_count_ && s != servers_.end() && s->second.outstanding < s->second.slots)
            steal_locked(s->first, s->second);
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
        auto& a = it->second;
        if (a.server.empty()) {
            --waiting_count_; // its queue drops it when it reaches the front
        } else if (auto s = servers_.find(a.server); s != servers_.end() && s->second.outstanding > 0) {
            --s->second.outstanding;
        }
        r = result_without_run(*a.job, Status::cancelled, "CancelledError", "cancelled before it started");
        jobs_.erase(it);
        if (waiting_count_) pump_locked();
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
    s.waiting = waiting_count_;
    return s;
}

void LoadBalancer::deliver(std::vector<Result>& results) {
    for (auto& r : results) results_->accept(std::move(r));
}

} // namespace dynexec
