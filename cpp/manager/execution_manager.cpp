#include "manager/execution_manager.hpp"

#include "common/errors.hpp"
#include "services/catalog.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <iostream>

namespace dynexec {

ExecutionManager::ExecutionManager(LookupRegistry& registry, std::string session, BalancerStarter start_balancer)
    : registry_(registry), ids_(std::move(session)), start_balancer_(std::move(start_balancer)) {
    auto remember = [this](const Entry& e) {
        std::lock_guard lk(mu_);
        for (auto& s : e.services) known_.insert_or_assign(s->name, s); // the newest declaration
    };
    subscription_ = registry_.subscribe([this, remember](const RegistryEvent& ev) {
        if (ev.what != RegistryEvent::What::left) remember(ev.entry);
        else if (ev.entry.kind == Kind::load_balancer) {
            std::lock_guard lk(mu_);
            takeovers_.emplace_back([this, gone = ev.entry.balancer] { take_over(gone); });
        }
    });
    for (auto& e : registry_.lookup(Kind::compute_server)) remember(e);
}

ExecutionManager::~ExecutionManager() {
    registry_.unsubscribe(subscription_);
    std::vector<std::thread> threads;
    {
        std::lock_guard lk(mu_);
        threads.swap(takeovers_);
    }
    for (auto& t : threads) t.join();
}

void ExecutionManager::take_over(std::shared_ptr<LoadBalancerProxy> gone) {
    try {
        for (auto& job : gone->abandon()) balancer()->dispatch(std::move(job));
    } catch (const std::exception& e) { // on a thread of its own: report, never terminate the process
        std::cerr << "dynexec: could not hand over the jobs of a load balancer that left: " << e.what() << std::endl;
    }
}

void ExecutionManager::know(const std::vector<ServicePtr>& services) {
    std::lock_guard lk(mu_);
    for (auto& s : services) known_.try_emplace(s->name, s);
}

ServicePtr ExecutionManager::service(const std::string& name) {
    std::lock_guard lk(mu_);
    if (auto it = known_.find(name); it != known_.end()) return it->second;
    std::vector<std::string> names;
    for (auto& [n, s] : known_) names.push_back(n);
    unknown_service(name, std::move(names));
}

std::shared_ptr<LoadBalancerProxy> ExecutionManager::balancer() {
    for (int tries = 0; tries < 2; ++tries) {
        {
            std::lock_guard lk(mu_);
            auto generation = registry_.generation();
            if (balancer_ && balancer_generation_ == generation && registry_.clock().now() < balancer_valid_until_)
                return balancer_;
            auto found = registry_.lookup(Kind::load_balancer);
            if (!found.empty()) { // the first available, as the seed says
                balancer_ = found.front().balancer;
                balancer_generation_ = generation;
                balancer_valid_until_ = found.front().expiry;
                return balancer_;
            }
            balancer_.reset();
        }
        start_balancer_();
    }
    throw std::runtime_error("no load balancer is registered and none could be started");
}

JobPtr ExecutionManager::make(const ServiceDef& def, const std::string& service, const Params& params,
                              const std::string& owner, const JobOptions& options) {
    check_options(options);
    auto job = std::make_shared<Job>();
    job->time_limit = options.time_limit;
    job->retries = options.retries;
    job->params = validate_params(def, params);
    job->service = service;
    job->owner = owner;
    job->submit_time = wall_time();
    return job;
}

JobId ExecutionManager::submit(const std::string& service_name, const Params& params, const std::string& owner,
                               const JobOptions& options, const std::function<void(const JobId&)>& on_id,
                               JobInfoPtr info) {
    auto job = make(*service(service_name), service_name, params, owner, options);
    job->info = std::move(info);
    job->id = ids_.next();
    auto id = job->id;
    if (on_id) on_id(id);
    balancer()->dispatch(std::move(job));
    ++submitted_;
    return id;
}

std::vector<JobId> ExecutionManager::submit_many(const std::string& service_name, const std::vector<Params>& params,
                                            const std::string& owner, const JobOptions& options,
                                            const std::vector<JobInfoPtr>& infos) {
    if (!infos.empty() && infos.size() != params.size())
        throw InvalidJob(fmt::format("{} job descriptions for {} jobs", infos.size(), params.size()));
    auto def = service(service_name);
    std::vector<JobPtr> jobs;
    jobs.reserve(params.size());
    for (auto& p : params) try {
            jobs.push_back(make(*def, service_name, p, owner, options));
        } catch (const InvalidJob& e) { // none is queued: say which one was wrong
            throw InvalidJob(fmt::format("job {} of {}: {}", jobs.size() + 1, params.size(), e.what()));
        }
    std::vector<JobId> ids;
    ids.reserve(jobs.size());
    for (std::size_t i = 0; i < jobs.size(); ++i) {
        ids.push_back(jobs[i]->id = ids_.next());
        if (!infos.empty()) jobs[i]->info = infos[i];
    }
    balancer()->dispatch(std::move(jobs));
    submitted_ += ids.size();
    return ids;
}

std::vector<Result> ExecutionManager::submit_reserved(std::vector<Reserved>&& jobs, const std::string& owner,
                                                      const std::function<void(const JobId&)>& on_id) {
    std::vector<Result> refused;
    std::vector<JobPtr> valid;
    valid.reserve(jobs.size());
    for (auto& j : jobs) try {
            auto job = make(*service(j.service), j.service, j.params, owner, j.options);
            job->id = std::move(j.id);
            job->info = std::move(j.info);
            if (on_id) on_id(job->id);
            valid.push_back(std::move(job));
        } catch (const InvalidJob& e) { // that one fails; the others run
            Job failed;
            failed.id = j.id;
            failed.service = j.service;
            failed.owner = owner;
            failed.submit_time = wall_time();
            refused.push_back(result_without_run(failed, Status::error,
                                                 dynamic_cast<const UnknownService*>(&e) ? "UnknownServiceError"
                                                                                         : "InvalidJobError",
                                                 e.what()));
        }
    submitted_ += valid.size();
    if (!valid.empty()) balancer()->dispatch(std::move(valid));
    return refused;
}

std::vector<ServicePtr> ExecutionManager::services() const {
    std::lock_guard lk(mu_);
    std::vector<ServicePtr> out;
    for (auto& [name, s] : known_) out.push_back(s);
    return out;
}

std::shared_ptr<LoadBalancerProxy> ExecutionManager::holder(const JobId& id) const {
    for (auto& e : registry_.lookup(Kind::load_balancer))
        if (e.balancer->state(id)) return e.balancer;
    return nullptr;
}

void ExecutionManager::cancel(const JobId& id, std::function<void(bool)> done) {
    if (auto b = holder(id)) return b->cancel(id, std::move(done));
    done(false);
}

bool ExecutionManager::cancel(const JobId& id) {
    auto b = holder(id);
    return b && b->cancel(id);
}

std::vector<bool> ExecutionManager::cancel_many(const std::vector<JobId>& ids) {
    std::vector<bool> out(ids.size(), false);
    // Which balancer holds each (there is one, but for a hand-over), then one call per balancer.
    auto balancers = registry_.lookup(Kind::load_balancer);
    std::vector<std::vector<std::size_t>> held(balancers.size());
    for (std::size_t i = 0; i < ids.size(); ++i)
        for (std::size_t b = 0; b < balancers.size(); ++b)
            if (balancers[b].balancer->state(ids[i])) {
                held[b].push_back(i);
                break;
            }
    for (std::size_t b = 0; b < balancers.size(); ++b) {
        std::vector<JobId> mine;
        for (auto i : held[b]) mine.push_back(ids[i]);
        auto answers = balancers[b].balancer->cancel_many(mine);
        for (std::size_t k = 0; k < held[b].size(); ++k) out[held[b][k]] = answers[k];
    }
    return out;
}

bool ExecutionManager::kill(const JobId& id, Status why) {
    auto b = holder(id);
    return b && b->kill(id, why);
}

std::optional<JobState> ExecutionManager::state(const JobId& id) const {
    for (auto& e : registry_.lookup(Kind::load_balancer))
        if (auto s = e.balancer->state(id)) return s;
    return std::nullopt;
}

std::size_t ExecutionManager::fail_all(const std::string& error_type, const std::string& message) {
    std::size_t n = 0;
    for (auto& e : registry_.lookup(Kind::load_balancer)) n += e.balancer->fail_all(error_type, message);
    return n;
}

} // namespace dynexec
