#include "balancer/load_balancer.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <unordered_set>

namespace dynexec {
namespace {
// Read once, before the balancer is shared: its lock guards what its policy changes as it chooses.
std::string_view policy_name(const Policy& p) NO_THREAD_SAFETY_ANALYSIS { return p.name(); }
bool policy_stats(const Policy& p) NO_THREAD_SAFETY_ANALYSIS { return p.needs_stats(); }
} // namespace

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
      policy_(make_policy(options_.policy, options_.seed)), policy_name_(policy_name(*policy_)),
      needs_stats_(policy_stats(*policy_)) {
    if (options_.max_attempts < 1)
        throw std::invalid_argument(fmt::format("max_attempts must be at least 1, got {}", options_.max_attempts));
}

LoadBalancer::~LoadBalancer() { registry_.unsubscribe(subscription_); }

LoadBalancer::Probe LoadBalancer::probe() {
    Probe p;
    {
        MutexLock lk(sight_mu_);
        p.sightings = sightings_;
    }
    auto generation = registry_.generation();
    if (!p.sightings || p.sightings->generation != generation) {
        // Servers joined or left: read what is new (slots, shares_jobs are fixed for a server's life).
        auto fresh = std::make_shared<Sightings>();
        fresh->generation = generation;
        for (auto& e : registry_.lookup(Kind::compute_server)) {
            const Sighting* old = nullptr;
            if (p.sightings)
                if (auto it = p.sightings->servers.find(e.id);
                    it != p.sightings->servers.end() && it->second.proxy == e.server.get())
                    old = &it->second;
            fresh->servers.emplace(e.id, old ? *old
                                             : Sighting{e.server.get(), e.server, std::max(1u, e.server->slots()),
                                                        e.server->shares_jobs()});
        }
        MutexLock lk(sight_mu_);
        // The generation only grows: a slower probe of an older one does not replace a newer.
        if (!sightings_ || sightings_->generation < fresh->generation) sightings_ = fresh;
        p.sightings = sightings_;
    }
    if (needs_stats_)
        for (auto& [id, seen] : p.sightings->servers)
            if (auto proxy = seen.weak.lock()) p.stats.emplace(id, proxy->stats());
    return p;
}

void LoadBalancer::absorb_locked(Probe& p) {
    if (!seen_ || seen_->generation < p.sightings->generation) seen_ = p.sightings;
    if (needs_stats_) polled_ = std::move(p.stats);
}

void LoadBalancer::flush(bool nested) {
    auto me = std::this_thread::get_id();
    bool outer;
    Call c;
    {
        MutexLock lk(mu_);
        if (outbox_.empty()) return;
        if (flusher_ != std::thread::id() && (flusher_ != me || !nested)) return; // the flusher makes ours too
        outer = flusher_ == std::thread::id();
        flusher_ = me;
        c = std::move(outbox_.front());
        outbox_.pop_front();
    }
    std::shared_ptr<LoadBalancer> self; // the sink of every run
    for (;;) {
        try {
            switch (c.what) {
            case Call::What::run:
                if (!self) self = shared_from_this();
                c.proxy->run(c.job, c.attempt, self);
                break;
            case Call::What::stop:
                c.proxy->stop(c.job->id, c.attempt, c.why);
                break;
            case Call::What::revoke:
                // A server sharing the Job answers now; its answer takes the path a later one would.
                if (auto ok = c.proxy->revoke(c.job, c.attempt)) {
                    std::vector<Result> out;
                    Answers answers;
                    {
                        MutexLock lk(mu_);
                        revoked_locked(c.job->id, c.attempt, *ok, out, answers);
                    }
                    deliver(out, answers);
                }
                break;
            }
        } catch (...) {
            // The calls left wait for the next entry point; this one's caller hears of the failure.
            if (outer) {
                MutexLock lk(mu_);
                flusher_ = {};
            }
            throw;
        }
        MutexLock lk(mu_);
        if (outbox_.empty()) {
            if (outer) flusher_ = {};
            return;
        }
        c = std::move(outbox_.front());
        outbox_.pop_front();
    }
}

void LoadBalancer::dispatch(JobPtr job) {
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        dispatch_locked(std::move(job));
    }
    flush();
}

void LoadBalancer::dispatch(std::vector<JobPtr> jobs) {
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        for (auto& job : jobs) dispatch_locked(std::move(job));
    }
    flush();
}

void LoadBalancer::dispatch_locked(JobPtr job) {
    if (abandoned_) throw std::logic_error("dispatch to a load balancer that has left the registry");
    auto& a = jobs_[job->id];
    a = {};
    a.job = job;
    if (job->state() == JobState::running) a.starts = 1; // handed over while running under another balancer
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
    MutexLock lk(mu_);
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
    if (o.complete && o.generation == generation && registry_.clock().now() < o.valid_until) return o;
    // The registry changed, or a lease we saw may have run out: look again (renewals move valid_until on).
    o.servers.clear();
    o.generation = generation;
    o.valid_until = TimePoint::max();
    o.complete = true;
    for (auto& e : registry_.lookup(Kind::compute_server, service)) {
        auto* server = server_locked(e);
        if (!server) { // joined since this entry point's probe: offered once its join event has probed it
            o.complete = false;
            continue;
        }
        o.servers.emplace_back(server->first, &server->second);
        o.valid_until = std::min(o.valid_until, e.expiry);
    }
    return o;
}

std::pair<const std::string, LoadBalancer::Server>* LoadBalancer::server_locked(const Entry& e) {
    if (auto it = servers_.find(e.id); it != servers_.end()) {
        it->second.stats = e.stats;
        return &*it;
    }
    if (!seen_) return nullptr;
    auto seen = seen_->servers.find(e.id);
    if (seen == seen_->servers.end() || seen->second.proxy != e.server.get()) return nullptr;
    auto it = servers_.try_emplace(e.id).first;
    it->second.proxy = e.server;
    it->second.slots = seen->second.slots;
    it->second.shares_jobs = seen->second.shares_jobs;
    it->second.stats = e.stats;
    return &*it;
}

bool LoadBalancer::give_up_locked(const JobPtr& job, Assignment& a, std::vector<Result>& out) {
    if (int(a.vanished.size()) < options_.max_attempts) return false;
    out.push_back(result_without_run(
        *job, Status::lost, a.died ? "ServerDiedError" : "ServerLostError",
        fmt::format("job {} was running on a compute server that ended {} time(s), so it is not run again "
                    "(max_attempts={}): {}",
                    job->id, a.vanished.size(), options_.max_attempts, fmt::join(a.vanished, "; "))));
    out.back().attempts = a.starts;
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
        ServerStats stats;
        if (needs_stats_) { // polled before the lock; else as its last renewal published them
            auto polled = polled_.find(id);
            stats = polled != polled_.end() ? polled->second : s->stats;
        }
        candidates_.push_back({id, stats, s->outstanding, s->slots, order});
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
    outbox_.push_back({Call::What::run, server.proxy, job, attempt});
    return true;
}

void LoadBalancer::remember_locked(std::string_view server_id, Server& server, const JobPtr& job, int attempt) {
    server.sent.emplace_back(job, attempt);
    // Finished jobs leave from the front only: behind a long one they pile up. Past twice what could still
    // be taken, drop them all (amortised: the next sweep comes only once as many have been sent again).
    if (server.sent.size() > 2 * (std::size_t(server.outstanding) + 64)) {
        std::string id(server_id);
        std::deque<std::pair<JobPtr, int>> kept; // a loop, not erase_if: the analysis sees no lock in a lambda
        for (auto& entry : server.sent)
            if (current_locked(entry, id)) kept.push_back(std::move(entry));
        server.sent.swap(kept);
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
        auto& a = jobs_.at(job->id);
        if (a.revoking == attempt) continue; // asked already
        auto& offers = offers_locked(job->service);
        bool offered = std::any_of(offers.servers.begin(), offers.servers.end(),
                                   [&](auto& o) { return o.second == &thief; });
        if (!offered) { // the thief cannot run it: leave it where it is
            victim->sent.push_back(std::move(entry));
            break;
        }
        --want;
        // Only a job the victim confirms it has not started moves (revoked_locked()): none runs twice.
        a.revoking = attempt;
        a.thief = thief_id;
        outbox_.push_back({Call::What::revoke, victim->proxy, job, attempt});
    }
}

void LoadBalancer::send_locked(Assignment& a, const std::string& server_id, Server& server, int attempt) {
    a.job->requeue(attempt);
    a.server = server_id;
    ++server.outstanding;
    ++stats_.dispatched;
    remember_locked(server_id, server, a.job, attempt);
    outbox_.push_back({Call::What::run, server.proxy, a.job, attempt});
}

void LoadBalancer::refuse_cancels_locked(Assignment& a, Answers& answers) {
    for (auto& done : std::exchange(a.cancels, {})) answers.emplace_back(std::move(done), false);
    a.revoking = 0;
}

void LoadBalancer::requeue_locked(Assignment& a, int attempt) {
    a.server.clear();
    a.job->requeue(attempt);
    waiting_[a.job->service].emplace_front(a.job, &a);
    ++waiting_count_;
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
    Answers answers;
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        if (abandoned_) return;
        if (ev.what == RegistryEvent::What::left) {
            auto gone = servers_.find(ev.entry.id);
            // Which of its jobs had started: the shared Job says so exactly; a server in another process said
            // so in a message that may not have left it before it died, so after a crash its oldest unfinished
            // jobs, one per slot, count as started too (a server runs its queue in order).
            std::vector<JobPtr> orphans;
            std::size_t maybe_started = 0;
            if (gone != servers_.end()) {
                bool exact = gone->second.shares_jobs;
                std::size_t known = 0;
                for (auto& [id, a] : jobs_)
                    if (a.server == ev.entry.id && a.job->state() == JobState::running) ++known;
                if (!exact && !ev.clean && known < gone->second.slots) maybe_started = gone->second.slots - known;
            }
            std::unordered_set<const Job*> presumed;
            if (maybe_started && gone != servers_.end())
                for (auto& entry : gone->second.sent) {
                    if (presumed.size() >= maybe_started) break;
                    if (current_locked(entry, ev.entry.id)) presumed.insert(entry.first.get());
                }
            for (auto& [id, a] : jobs_)
                if (a.server == ev.entry.id) orphans.push_back(a.job);
            servers_.erase(ev.entry.id);
            offers_.clear(); // they point into servers_
            // Orphans go first: they were submitted before anything still waiting.
            std::sort(orphans.begin(), orphans.end(), [](auto& x, auto& y) { return x->submit_time > y->submit_time; });
            for (auto& job : orphans) {
                auto& a = jobs_.at(job->id);
                bool started = job->state() == JobState::running || presumed.count(job.get());
                refuse_cancels_locked(a, answers);
                a.server.clear();
                int attempt = job->attempt() + 1;
                if (started) ++a.starts;
                if (a.stop != Status::ok) { // kill() asked: it never runs again
                    if (!started) {
                        cancelled_locked(jobs_.find(job->id), out);
                        continue;
                    }
                    auto r = result_without_run(*job, a.stop, a.stop == Status::timeout ? "JobTimeoutError" : "JobKilledError",
                                                fmt::format("job {} was stopped ({}) and its server {} ended", job->id,
                                                            status_name(a.stop), ev.entry.id));
                    r.attempts = a.starts;
                    out.push_back(std::move(r));
                    jobs_.erase(job->id);
                    continue;
                }
                if (started && !ev.clean) {
                    a.vanished.push_back(fmt::format("{} (pid {}): {}", ev.entry.id, ev.entry.pid, ev.reason));
                    a.died = a.died || ev.died;
                }
                ++stats_.redispatched;
                if (give_up_locked(job, a, out)) continue;
                requeue_locked(a, attempt); // the vanished server's dispatch can no longer start or report
            }
        }
        // A join, a leave or new services: waiting jobs may have somewhere to go now.
        pump_locked();
        // A newcomer with nothing to take from the waiting jobs takes from the longest queue.
        if (ev.what == RegistryEvent::What::joined && !waiting_count_)
            if (auto* server = server_locked(ev.entry)) steal_locked(server->first, server->second);
    }
    deliver(out, answers);
    flush();
}

void LoadBalancer::complete(Result result, int attempt) {
    Answers answers;
    std::vector<Result> out;
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        auto it = jobs_.find(result.job_id);
        // (job, attempt) names one dispatch: any other is from a server given up on.
        if (it == jobs_.end() || it->second.job->attempt() != attempt || it->second.server.empty()) {
            ++stats_.stale; // the job was re-dispatched: this server's result is not the one we keep
            return;
        }
        auto& a = it->second;
        refuse_cancels_locked(a, answers);
        // A pointer, not an iterator: pump_locked() may add servers, and a rehash invalidates iterators.
        std::pair<const std::string, Server>* s = nullptr;
        if (auto found = servers_.find(a.server); found != servers_.end()) s = &*found;
        if (s) {
            if (s->second.outstanding > 0) --s->second.outstanding;
            auto& sent = s->second.sent; // drop what has finished from the front, keep the rest in order
            while (!sent.empty() && (sent.front().first == a.job || !current_locked(sent.front(), s->first)))
                sent.pop_front();
            if (result.start_time > 0 && result.end_time >= result.start_time) {
                double run = result.end_time - result.start_time;
                s->second.run_seconds = Capacity::average(s->second.run_seconds, run);
                run_seconds_ = Capacity::average(run_seconds_, run);
            }
        }
        bool ran = result.status != Status::cancelled; // a kill() that reached it before it started
        if (result.status == Status::error && a.retried < a.job->retries && a.stop == Status::ok) {
            ++a.retried; // opt-in: run it again
            ++a.starts;
            ++stats_.retried;
            requeue_locked(a, attempt + 1);
            pump_locked();
            result.job_id.clear();
        } else {
            result.server = a.server;
            result.attempts = a.starts + (ran ? 1 : 0);
            result.info = a.job->info; // what the job was stays here, never on the wire
            jobs_.erase(it);
            if (waiting_count_) pump_locked();
        }
        // A server about to idle while another has a queue takes some of it (a slot left free costs more
        // than a move); one that still has work queued steals nothing.
        if (!waiting_count_ && s && s->second.outstanding < s->second.slots) steal_locked(s->first, s->second);
    }
    if (!result.job_id.empty()) out.push_back(std::move(result));
    deliver(out, answers);
    flush();
}

void LoadBalancer::revoked(const JobId& id, int attempt, bool ok) {
    Answers answers;
    std::vector<Result> out;
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        revoked_locked(id, attempt, ok, out, answers);
    }
    deliver(out, answers);
    flush();
}

void LoadBalancer::revoked_locked(const JobId& id, int attempt, bool ok, std::vector<Result>& out,
                                  Answers& answers) {
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.revoking != attempt || it->second.job->attempt() != attempt) return;
    auto& a = it->second;
    a.revoking = 0;
    auto cancels = std::exchange(a.cancels, {});
    if (ok) {
        a.job->try_revoke(attempt); // our copy agrees: that dispatch is over
        if (auto s = servers_.find(a.server); s != servers_.end() && s->second.outstanding > 0)
            --s->second.outstanding;
        if (!cancels.empty()) {
            cancelled_locked(it, out);
        } else { // a steal: the server that asked takes it if it still has room, else the first that has
            ++stats_.stolen;
            auto thief = servers_.find(a.thief);
            if (thief != servers_.end() && thief->second.outstanding < capacity(thief->second))
                send_locked(a, thief->first, thief->second, attempt + 1);
            else
                requeue_locked(a, attempt + 1);
        }
        pump_locked();
    }
    for (auto& done : cancels) answers.emplace_back(std::move(done), ok);
}

void LoadBalancer::cancelled_locked(std::unordered_map<JobId, Assignment>::iterator it, std::vector<Result>& out) {
    auto r = result_without_run(*it->second.job, Status::cancelled, "CancelledError", "cancelled before it started");
    r.attempts = it->second.starts;
    out.push_back(std::move(r));
    jobs_.erase(it);
}

void LoadBalancer::cancel(const JobId& id, std::function<void(bool)> done) {
    std::vector<Result> out;
    Answers answers;
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        auto it = jobs_.find(id);
        bool ok = false, asked = false;
        if (it != jobs_.end()) {
            auto& a = it->second;
            int attempt = a.job->attempt();
            if (a.server.empty()) {
                if ((ok = a.job->try_cancel())) --waiting_count_; // its queue drops it when it reaches the front
            } else if (a.job->state() == JobState::queued) {
                if (auto s = servers_.find(a.server); s != servers_.end()) {
                    // Its server answers (now or later) through revoked_locked(), which answers `done`.
                    if (a.revoking != attempt) outbox_.push_back({Call::What::revoke, s->second.proxy, a.job, attempt});
                    a.revoking = attempt;
                    a.cancels.push_back(std::move(done));
                    asked = true;
                }
            }
            if (ok) {
                cancelled_locked(it, out);
                if (waiting_count_) pump_locked();
            }
        }
        if (!asked) answers.emplace_back(std::move(done), ok);
    }
    deliver(out, answers);
    // Even from inside a call of ours (a server calling back): the sync cancel() waits for this answer.
    flush(/*nested=*/true);
}

std::vector<bool> LoadBalancer::cancel_many(const std::vector<JobId>& ids) {
    std::vector<bool> out(ids.size(), false);
    std::vector<std::size_t> on_servers;
    std::vector<Result> results;
    Answers answers;
    {
        MutexLock lk(mu_);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            auto it = jobs_.find(ids[i]);
            if (it == jobs_.end()) continue;
            if (!it->second.server.empty()) {
                on_servers.push_back(i);
            } else if (it->second.job->try_cancel()) {
                --waiting_count_;
                cancelled_locked(it, results);
                out[i] = true;
            }
        }
    }
    deliver(results, answers);
    for (auto i : on_servers) out[i] = cancel(ids[i]); // a server may have to confirm
    return out;
}

bool LoadBalancer::kill(const JobId& id, Status why) {
    std::vector<Result> out;
    Answers answers;
    auto p = probe();
    {
        MutexLock lk(mu_);
        absorb_locked(p);
        auto it = jobs_.find(id);
        if (it == jobs_.end()) return false;
        auto& a = it->second;
        a.stop = why;
        int attempt = a.job->attempt();
        auto s = a.server.empty() ? servers_.end() : servers_.find(a.server);
        if (a.server.empty()) { // waiting here: it never starts
            if (a.job->try_cancel()) --waiting_count_;
            cancelled_locked(it, out);
        } else if (s != servers_.end() && s->second.shares_jobs && a.job->try_revoke(attempt)) {
            if (s->second.outstanding > 0) --s->second.outstanding; // queued there: it never starts
            cancelled_locked(it, out);
            if (waiting_count_) pump_locked();
        } else if (s != servers_.end()) { // its answer comes as its result: cancelled, killed, timeout
            outbox_.push_back({Call::What::stop, s->second.proxy, a.job, attempt, why});
        }
    }
    deliver(out, answers);
    flush();
    return true;
}

std::optional<JobState> LoadBalancer::state(const JobId& id) const {
    MutexLock lk(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    auto s = it->second.job->state();
    // A job of ours is unfinished: cancelled means a server in this process has just revoked its dispatch,
    // and this balancer has not heard yet (it is moving, or about to be cancelled). It has not started.
    return s == JobState::cancelled ? JobState::queued : s;
}

Backlog LoadBalancer::backlog() const {
    MutexLock lk(mu_);
    Backlog b;
    for (auto& [id, a] : jobs_)
        if (!a.server.empty()) ++(a.job->state() == JobState::running ? b.running : b.queued);
    for (auto& [service, queue] : waiting_) {
        std::uint64_t n = std::count_if(queue.begin(), queue.end(),
                                        [](auto& e) { return e.first->state() != JobState::cancelled; });
        if (n) b.waiting.push_back({service, n});
    }
    return b;
}

std::size_t LoadBalancer::fail_all(const std::string& error_type, const std::string& message) {
    std::vector<Result> out;
    Answers answers;
    {
        MutexLock lk(mu_);
        for (auto& [id, a] : jobs_) {
            a.job->try_cancel(); // one still queued somewhere never starts
            refuse_cancels_locked(a, answers);
            auto r = result_without_run(*a.job, Status::lost, error_type, fmt::format("job {}: {}", id, message));
            r.attempts = a.starts;
            out.push_back(std::move(r));
        }
        jobs_.clear();
        waiting_.clear();
        waiting_count_ = 0;
        for (auto& [id, s] : servers_) {
            s.outstanding = 0;
            s.sent.clear();
        }
        stats_.lost += out.size();
    }
    deliver(out, answers);
    return out.size();
}

std::size_t LoadBalancer::cancel_all() {
    std::vector<JobId> ids;
    {
        MutexLock lk(mu_);
        for (auto& [id, a] : jobs_) ids.push_back(id);
    }
    auto answers = cancel_many(ids);
    return std::size_t(std::count(answers.begin(), answers.end(), true));
}

std::size_t LoadBalancer::outstanding() const {
    MutexLock lk(mu_);
    return jobs_.size();
}

BalancerStats LoadBalancer::stats() const {
    MutexLock lk(mu_);
    auto s = stats_;
    s.waiting = waiting_count_;
    return s;
}

void LoadBalancer::deliver(std::vector<Result>& results, Answers& answers) {
    for (auto& r : results) results_->accept(std::move(r));
    for (auto& [done, ok] : answers) done(ok);
}

} // namespace dynexec
