#include "engine/engine.hpp"

#include "archive/results_finder.hpp"
#include "archive/results_manager.hpp"
#include "balancer/load_balancer.hpp"
#include "common/errors.hpp"
#include "common/host.hpp"
#include "common/result_queue.hpp"
#include "manager/execution_manager.hpp"
#include "registry/lease_drivers.hpp"
#include "server/compute_server.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <thread>

namespace dynexec {
namespace {

// A component of this process registered on a lease, with the thread that renews it.
template <class T> struct Registered {
    std::shared_ptr<T> component;
    std::unique_ptr<LeaseRenewer> renewer;
};

} // namespace

struct Engine::Impl {
    EngineOptions options;
    LookupRegistry registry; // first: outlives everything that holds a reference to it
    Duration lease, renew;
    std::shared_ptr<ResultsManager> results;

    mutable std::mutex mu;
    std::map<std::string, Registered<ComputeServer>> servers;
    std::map<std::string, Registered<LoadBalancer>> balancers;
    bool closed = false;   // no more jobs taken
    bool finished = false; // shut down completely

    ResultQueue done; // results for this process's callers
    std::mutex done_mu;
    std::condition_variable done_cv; // delivered or shutdown_requested changed
    std::uint64_t delivered = 0;
    bool shutdown_requested = false; // a remote client asked the cluster to stop

    // Live output from remote servers, until Python polls it.
    mutable std::mutex output_mu;
    std::condition_variable output_cv;
    std::deque<OutputChunk> output;
    std::size_t output_bytes = 0;
    std::uint64_t output_dropped = 0;

    std::unique_ptr<ExecutionManager> manager;
    std::unique_ptr<LeaseReaper> reaper;
    std::unique_ptr<remote::Hub> hub;
    std::unique_ptr<PeriodicThread> enforcer;

    explicit Impl(EngineOptions o) : options(std::move(o)) {
        if (options.lease_seconds <= 0) throw std::invalid_argument("lease_seconds must be positive");
        if (options.renew_seconds < 0 || options.renew_seconds >= options.lease_seconds)
            throw std::invalid_argument(fmt::format("renew_seconds must be below lease_seconds ({}), got {}",
                                                    options.lease_seconds, options.renew_seconds));
        make_policy(options.policy, 0); // fail early on a bad policy name
        if (options.max_attempts < 1)
            throw std::invalid_argument(fmt::format("max_attempts must be at least 1, got {}", options.max_attempts));
        lease = from_seconds(options.lease_seconds);
        renew = from_seconds(options.renew_seconds ? options.renew_seconds : options.lease_seconds / 4);
        if (!options.seed) options.seed = std::random_device{}();

        JobIdGenerator session;
        results = ResultsManager::open(options.archive, session.session(),
                                       [this](std::vector<Result>&& batch) { on_archived(std::move(batch)); },
                                       options.archive_access);
        manager = std::make_unique<ExecutionManager>(registry, session.session(), [this] { start_balancer(); });
        // What this process can run, servers elsewhere run too: jobs for it wait for a server to join.
        manager->know(ServiceCatalog::process().all());
        registry.trust_catalog(&ServiceCatalog::process()); // a server may not redeclare them otherwise
        // The reaper's period bounds how late an expired lease is noticed.
        reaper = std::make_unique<LeaseReaper>(registry, std::min(lease / 10, Duration(std::chrono::milliseconds(5))));
        if (options.listen) {
            remote::HubHooks hooks;
            hooks.session = session.session();
            hooks.reserve_ids = [this](std::uint64_t n) { return manager->reserve_ids(n); };
            hooks.services = [this] { return manager->services(); };
            hooks.submit = [this](std::vector<wire::SubmitJob>&& jobs, const std::string& owner,
                                  const std::function<void(const JobId&)>& on_id) {
                std::vector<ExecutionManager::Reserved> reserved;
                reserved.reserve(jobs.size());
                for (auto& j : jobs)
                    reserved.push_back({std::move(j.id), std::move(j.service), std::move(j.params), j.options,
                                        std::make_shared<const JobInfo>(std::move(j.info))});
                bool refuse;
                {
                    std::lock_guard lk(mu);
                    refuse = closed;
                }
                if (!refuse) return manager->submit_reserved(std::move(reserved), owner, on_id);
                std::vector<Result> out;
                for (auto& j : reserved) {
                    Job failed;
                    failed.id = j.id;
                    failed.service = j.service;
                    failed.owner = owner;
                    out.push_back(result_without_run(failed, Status::error, "ShutDownError", "the cluster is shutting down"));
                }
                return out;
            };
            hooks.cancel = [this](const JobId& id, std::function<void(bool)> done) { manager->cancel(id, std::move(done)); };
            hooks.kill = [this](const JobId& id, Status why) { return manager->kill(id, why); };
            hooks.state = [this](const JobId& id) { return manager->state(id); };
            hooks.backlog = [this] { return backlog(); };
            hooks.servers = [this] { return server_infos(); };
            hooks.shutdown = [this] {
                std::lock_guard lk(done_mu);
                shutdown_requested = true;
                done_cv.notify_all();
            };
            hooks.output = [this](std::vector<OutputChunk>&& chunks) { on_output(std::move(chunks)); };
            hub = std::make_unique<remote::Hub>(registry, *options.listen, std::move(hooks), lease, renew);
        }
        int n = options.servers >= 0 ? options.servers : int(std::max(1u, std::thread::hardware_concurrency()));
        for (int i = 0; i < n; ++i) add_server(options.slots_per_server, options.threads_per_server);
        // Time limits and stop grace of the compute servers in this process.
        if (n > 0)
            enforcer = std::make_unique<PeriodicThread>(std::chrono::milliseconds(20), [this] {
                std::vector<std::shared_ptr<ComputeServer>> local;
                {
                    std::lock_guard lk(mu);
                    for (auto& [id, s] : servers) local.push_back(s.component);
                }
                for (auto& s : local) s->enforce(); // a job given up on runs on: this process cannot end
            });
    }

    void on_archived(std::vector<Result>&& batch) {
        auto n = batch.size();
        if (hub) hub->route(batch); // results of remote clients' jobs go back to them
        done.push(std::move(batch));
        std::lock_guard lk(done_mu);
        delivered += n;
        if (delivered >= manager->submitted()) done_cv.notify_all(); // shutdown waits for the last result
    }

    void on_output(std::vector<OutputChunk>&& chunks) {
        std::lock_guard lk(output_mu);
        for (auto& c : chunks) {
            if (!c.final && output_bytes + c.data.size() > kOutputBacklog) { // nobody polls fast enough
                output_dropped += c.data.size();
                continue;
            }
            output_bytes += c.data.size();
            output.push_back(std::move(c));
        }
        output_cv.notify_all();
    }

    void start_balancer() {
        std::lock_guard lk(mu);
        if (!registry.lookup(Kind::load_balancer).empty()) return; // another thread started one
        add_balancer_locked();
    }

    std::string add_balancer_locked() {
        auto lb = LoadBalancer::create(registry, results, {options.policy, options.max_attempts, options.seed + balancers.size()});
        Registration reg;
        reg.kind = Kind::load_balancer;
        reg.host = hostname();
        reg.pid = getpid();
        reg.balancer = lb;
        auto entry = registry.join(std::move(reg), lease);
        auto renewer = std::make_unique<LeaseRenewer>(registry, entry.id, renew, [] { return std::nullopt; });
        balancers[entry.id] = {lb, std::move(renewer)};
        return entry.id;
    }

    std::string add_server(unsigned slots, unsigned threads) {
        auto server = std::make_shared<ComputeServer>(ComputeServer::Options{slots, threads}, ServiceCatalog::process());
        Registration reg;
        reg.kind = Kind::compute_server;
        reg.host = hostname();
        reg.pid = getpid();
        reg.services = ServiceCatalog::process().all();
        reg.server = server;
        std::lock_guard lk(mu);
        if (closed) throw ShutDown("the engine is shut down");
        auto entry = registry.join(std::move(reg), lease);
        server->set_id(entry.id);
        auto renewer = std::make_unique<LeaseRenewer>(registry, entry.id, renew,
                                                      [s = server.get()] { return std::optional(s->stats()); });
        servers[entry.id] = {server, std::move(renewer)};
        return entry.id;
    }

    Backlog backlog() const {
        Backlog total;
        std::map<std::string, std::uint64_t> waiting;
        for (auto& e : registry.lookup(Kind::load_balancer)) {
            auto b = e.balancer->backlog();
            total.running += b.running;
            total.queued += b.queued;
            for (auto& w : b.waiting) waiting[w.service] += w.jobs;
        }
        for (auto& [service, n] : waiting) total.waiting.push_back({service, n});
        return total;
    }

    std::vector<ServerInfo> server_infos() const {
        std::vector<ServerInfo> out;
        for (auto& e : registry.lookup(Kind::compute_server)) {
            ServerInfo s{e.id, e.host, e.pid, to_wall(e.expiry), {}, e.server->stats()};
            for (auto& svc : e.services) s.services.push_back(svc->name);
            out.push_back(std::move(s));
        }
        return out;
    }

    Registered<ComputeServer>& server(const std::string& id) {
        auto it = servers.find(id);
        if (it == servers.end()) throw std::invalid_argument(fmt::format("no compute server '{}' in this engine", id));
        return it->second;
    }
};

Engine::Engine(EngineOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Engine::~Engine() {
    try {
        shutdown(true, false);
    } catch (...) {
    }
}

void Engine::refuse_if_closed() const {
    std::lock_guard lk(impl_->mu);
    if (impl_->closed) throw ShutDown("cannot submit: the executor has been shut down");
}

JobId Engine::submit(const std::string& service, const Params& params, const std::string& owner,
                     const JobOptions& options, const std::function<void(const JobId&)>& on_id, JobInfoPtr info) {
    refuse_if_closed();
    if (impl_->hub) impl_->hub->hold(params); // first: its first dispatch sends the objects to keep
    return impl_->manager->submit(service, params, owner, options, on_id, std::move(info));
}

std::vector<JobId> Engine::submit_many(const std::string& service, const std::vector<Params>& params,
                                       const std::string& owner, const JobOptions& options,
                                       const std::vector<JobInfoPtr>& infos) {
    refuse_if_closed();
    if (impl_->hub)
        for (auto& p : params) impl_->hub->hold(p);
    return impl_->manager->submit_many(service, params, owner, options, infos);
}

void Engine::set_session_info(const std::vector<std::pair<std::string, std::string>>& info) {
    impl_->results->set_session_info(info);
}

void Engine::release(const std::vector<std::string>& keys) {
    if (impl_->hub) impl_->hub->release(keys);
}

bool Engine::cancel(const JobId& id) { return impl_->manager->cancel(id); }

std::vector<bool> Engine::cancel_many(const std::vector<JobId>& ids) { return impl_->manager->cancel_many(ids); }

bool Engine::kill(const JobId& id) { return impl_->manager->kill(id, Status::killed); }

std::string Engine::state(const JobId& id) const {
    auto s = impl_->manager->state(id);
    if (!s || *s == JobState::cancelled) return "";
    return *s == JobState::running ? "running" : "queued";
}

Backlog Engine::backlog() const { return impl_->backlog(); }

std::size_t Engine::fail_pending(const std::string& error_type, const std::string& message) {
    return impl_->manager->fail_all(error_type, message);
}

bool Engine::server_exited(int pid, const std::string& reason) {
    bool found = false;
    for (auto& e : impl_->registry.lookup(Kind::compute_server))
        if (e.pid == pid && e.host == hostname())
            found |= impl_->registry.cancel(e.id, reason, /*clean=*/false, /*died=*/true);
    return found;
}

std::vector<Result> Engine::poll(std::size_t max, std::chrono::milliseconds timeout) {
    return impl_->done.poll(max, timeout);
}

bool Engine::expect(const JobId& id) { return impl_->done.expect(id); }
std::optional<Result> Engine::await(const JobId& id, std::chrono::milliseconds timeout) {
    return impl_->done.await(id, timeout);
}
void Engine::forget(const JobId& id) { impl_->done.forget(id); }

std::vector<ServerInfo> Engine::servers() const { return impl_->server_infos(); }

std::string Engine::endpoint() const { return impl_->hub ? impl_->hub->endpoint() : ""; }

std::size_t Engine::wait_for_servers(std::size_t n, std::chrono::milliseconds timeout) const {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto have = impl_->registry.lookup(Kind::compute_server).size();
        if (have >= n || std::chrono::steady_clock::now() >= deadline) return have;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

bool Engine::wait_shutdown_request(std::chrono::milliseconds timeout) {
    std::unique_lock lk(impl_->done_mu);
    return impl_->done_cv.wait_for(lk, timeout, [&] { return impl_->shutdown_requested; });
}

std::string Engine::add_server(unsigned slots, unsigned threads) { return impl_->add_server(slots, threads); }

void Engine::stop_renewing(const std::string& id) {
    std::lock_guard lk(impl_->mu);
    if (auto it = impl_->balancers.find(id); it != impl_->balancers.end()) return it->second.renewer->pause();
    impl_->server(id).renewer->pause();
}

std::string Engine::add_balancer() {
    std::lock_guard lk(impl_->mu);
    if (impl_->closed) throw ShutDown("the engine is shut down");
    return impl_->add_balancer_locked();
}

std::vector<std::string> Engine::balancers() const {
    std::vector<std::string> ids;
    for (auto& e : impl_->registry.lookup(Kind::load_balancer)) ids.push_back(e.id);
    return ids;
}

void Engine::remove_server(const std::string& server_id) {
    if (impl_->hub && impl_->hub->stop_server(server_id)) {
        impl_->registry.cancel(server_id); // its jobs go elsewhere now, not at lease expiry
        return;
    }
    Registered<ComputeServer> s;
    {
        std::lock_guard lk(impl_->mu);
        s = std::move(impl_->server(server_id));
        impl_->servers.erase(server_id);
    }
    s.renewer->stop();
    impl_->registry.cancel(server_id);
    // The server object lives on until it has finished what it holds; those results are dropped as stale.
    std::thread([server = std::move(s.component)] { server->wait_idle(); }).detach();
}

void Engine::refresh_services() {
    std::lock_guard lk(impl_->mu);
    for (auto& [id, s] : impl_->servers) impl_->registry.set_services(id, ServiceCatalog::process().all());
}

void Engine::load_plugin(const std::string& path, const std::vector<std::string>& names,
                         std::chrono::milliseconds timeout) {
    refresh_services();
    if (!impl_->hub) return;
    impl_->hub->load_plugin(path);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto everyone_offers = [&] {
        for (auto& e : impl_->registry.lookup(Kind::compute_server))
            for (auto& n : names)
                if (!e.offers(n)) return false;
        return true;
    };
    while (!everyone_offers() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

void Engine::set_echo(bool on) {
    if (impl_->hub) impl_->hub->set_echo(on);
}

std::vector<OutputChunk> Engine::poll_output(std::size_t max, std::chrono::milliseconds timeout) {
    std::unique_lock lk(impl_->output_mu);
    impl_->output_cv.wait_for(lk, timeout, [&] { return !impl_->output.empty(); });
    std::vector<OutputChunk> out;
    while (!impl_->output.empty() && out.size() < max) {
        impl_->output_bytes -= impl_->output.front().data.size();
        out.push_back(std::move(impl_->output.front()));
        impl_->output.pop_front();
    }
    return out;
}

std::uint64_t Engine::output_dropped() const {
    std::lock_guard lk(impl_->output_mu);
    return impl_->output_dropped;
}

std::optional<Result> Engine::find(const JobId& id) const {
    if (!impl_->options.archive) throw ArchiveError("this executor does not archive results (archive is off)");
    return ResultsFinder::find(*impl_->options.archive, id);
}

void Engine::shutdown(bool wait, bool cancel_pending) {
    std::map<std::string, Registered<LoadBalancer>> balancers;
    {
        std::lock_guard lk(impl_->mu);
        if (impl_->finished) return;
        impl_->closed = true;
    }
    if (cancel_pending)
        for (auto& e : impl_->registry.lookup(Kind::load_balancer))
            if (auto lb = std::dynamic_pointer_cast<LoadBalancer>(e.balancer)) lb->cancel_all();
    if (wait) {
        std::unique_lock lk(impl_->done_mu);
        impl_->done_cv.wait(lk, [&] { return impl_->delivered >= impl_->manager->submitted(); });
    }
    std::map<std::string, Registered<ComputeServer>> servers;
    {
        std::lock_guard lk(impl_->mu);
        if (impl_->finished) return;
        impl_->finished = true;
        servers.swap(impl_->servers);
        balancers.swap(impl_->balancers);
    }
    impl_->enforcer.reset();
    impl_->hub.reset(); // remote compute servers are told to leave
    for (auto& [id, s] : servers) s.renewer->stop();
    for (auto& [id, b] : balancers) b.renewer->stop();
    for (auto& [id, s] : servers) s.component->wait_idle();
    impl_->reaper->stop();
    impl_->results->close();
}

EngineStats Engine::stats() const {
    EngineStats s;
    s.submitted = impl_->manager->submitted();
    {
        std::lock_guard lk(impl_->done_mu);
        s.delivered = impl_->delivered;
    }
    std::lock_guard lk(impl_->mu);
    for (auto& [id, b] : impl_->balancers) {
        auto bs = b.component->stats();
        s.dispatched += bs.dispatched;
        s.redispatched += bs.redispatched;
        s.stolen += bs.stolen;
        s.lost += bs.lost;
        s.stale += bs.stale;
        s.outstanding += b.component->outstanding();
    }
    s.archive_error = impl_->results->last_error();
    if (impl_->hub) {
        s.objects_sent = impl_->hub->objects().sent();
        s.objects_held = impl_->hub->objects().size();
    }
    return s;
}

const std::string& Engine::session() const { return impl_->manager->session(); }
const std::optional<std::filesystem::path>& Engine::archive() const { return impl_->options.archive; }

} // namespace dynexec
