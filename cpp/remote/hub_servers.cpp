// The hub's server side: what compute servers in other processes send, and what the head sends them.
#include "remote/hub.hpp"

#include <fmt/format.h>

namespace dynexec::remote {

ServerSide::ServerSide(LookupRegistry& registry, Outbox& out, const HubHooks& hooks, const ObjectStore& objects,
                       Duration lease, Duration renew)
    : registry_(registry), out_(out), hooks_(hooks), objects_(objects), lease_(lease), renew_(renew) {
    subscription_ = registry_.subscribe([this](const RegistryEvent& ev) { on_registry_event(ev); });
}

ServerSide::~ServerSide() { registry_.unsubscribe(subscription_); }

void ServerSide::handle(const std::string& from, wire::Frames& frames) {
    bool known = wire::visit<wire::HelloServer, wire::Offer, wire::Renew, wire::ResultMsg, wire::Started, wire::Revoked,
                             wire::Leaving, wire::OutputMsg>(frames, [&](auto&& m) { on(from, std::move(m)); });
    if (!known) throw std::runtime_error(fmt::format("unknown message type {}", int(wire::type_of(frames))));
}

void ServerSide::stop_all() {
    std::lock_guard lk(mu_);
    for (auto& [routing, proxy] : by_routing_) out_.push(routing, wire::encode(wire::Stop{}));
}

bool ServerSide::stop_one(const std::string& server_id) {
    std::lock_guard lk(mu_);
    for (auto& [routing, id] : server_id_)
        if (id == server_id) {
            out_.push(routing, wire::encode(wire::Stop{}));
            return true;
        }
    return false;
}

void ServerSide::load_plugin(const std::string& path) {
    std::lock_guard lk(mu_);
    if (std::find(plugins_.begin(), plugins_.end(), path) == plugins_.end()) plugins_.push_back(path);
    for (auto& [routing, proxy] : by_routing_) out_.push(routing, wire::encode(wire::LoadPlugin{path}));
}

void ServerSide::set_echo(bool on) {
    std::lock_guard lk(mu_);
    if (on == echo_) return;
    echo_ = on;
    for (auto& [routing, proxy] : by_routing_) out_.push(routing, wire::encode(wire::Echo{on}));
}

void ServerSide::forget(const std::vector<std::string>& keys) {
    std::vector<std::shared_ptr<RemoteServerProxy>> proxies;
    {
        std::lock_guard lk(mu_);
        for (auto& [routing, proxy] : by_routing_) proxies.push_back(proxy);
    }
    for (auto& p : proxies) p->forget(keys);
}

std::pair<std::shared_ptr<RemoteServerProxy>, std::string> ServerSide::find(const std::string& routing) {
    std::lock_guard lk(mu_);
    auto p = by_routing_.find(routing);
    auto i = server_id_.find(routing);
    return {p == by_routing_.end() ? nullptr : p->second, i == server_id_.end() ? "" : i->second};
}

void ServerSide::alive(const std::string& routing) {
    if (auto [proxy, id] = find(routing); !id.empty()) registry_.renew(id); // its renewals wait behind the rest
}

void ServerSide::on(const std::string& from, wire::HelloServer&& hello) {
    if (hello.version != wire::kProtocolVersion) {
        out_.push(from, wire::encode(wire::Refused{fmt::format(
                            "this head speaks dynexec protocol version {}, the compute server {} (pid {}) version {}",
                            wire::kProtocolVersion, hello.host, hello.pid, hello.version)}));
        return;
    }
    if (auto [proxy, id] = find(from); !id.empty()) { // a second hello for one lease (e.g. resumed after a pause)
        out_.push(from, wire::encode(wire::Welcome{wire::kProtocolVersion, id, seconds(lease_), seconds(renew_)}));
        return;
    }
    if (hello.replaces_pid) // its predecessor died: what ran there is charged now, not at lease expiry
        for (auto& e : registry_.lookup(Kind::compute_server))
            if (e.pid == hello.replaces_pid && e.host == hello.host)
                registry_.cancel(e.id, hello.replaced_because, /*clean=*/false, /*died=*/true);
    auto proxy = std::make_shared<RemoteServerProxy>(out_, from, std::max(1u, hello.slots), objects_);
    Registration reg;
    reg.kind = Kind::compute_server;
    reg.host = hello.host;
    reg.pid = hello.pid;
    for (auto& s : hello.services) reg.services.push_back(std::make_shared<const ServiceDef>(std::move(s)));
    reg.server = proxy;
    {
        std::lock_guard lk(mu_);
        by_routing_[from] = proxy; // before join: the first job may be sent from inside it
        if (echo_) out_.push(from, wire::encode(wire::Echo{true})); // before any job
    }
    // join() may already send it waiting jobs; the server runs them whether or not it has been welcomed.
    std::string id;
    try {
        id = registry_.join(std::move(reg), lease_).id;
    } catch (const std::invalid_argument& e) { // e.g. it declares a service others offer with another signature
        {
            std::lock_guard lk(mu_);
            by_routing_.erase(from);
        }
        out_.push(from, wire::encode(wire::Refused{e.what()}));
        return;
    }
    std::lock_guard lk(mu_);
    server_id_[from] = id;
    out_.push(from, wire::encode(wire::Welcome{wire::kProtocolVersion, id, seconds(lease_), seconds(renew_)}));
    for (auto& path : plugins_) out_.push(from, wire::encode(wire::LoadPlugin{path}));
}

void ServerSide::on(const std::string& from, wire::Offer&& offer) {
    std::vector<ServicePtr> services;
    for (auto& s : offer.services) services.push_back(std::make_shared<const ServiceDef>(std::move(s)));
    auto [proxy, id] = find(from);
    if (id.empty()) return;
    try {
        registry_.set_services(id, std::move(services));
    } catch (const std::invalid_argument& e) { // it keeps what it offered before
        out_.push(from, wire::encode(wire::Refused{e.what()}));
    }
}

void ServerSide::on(const std::string& from, wire::Renew&& m) {
    auto [proxy, id] = find(from);
    // The registry keeps what the server publishes; the proxy counts results as they arrive, fresher.
    if (proxy && registry_.renew(id, m.stats)) out_.push(from, wire::encode(wire::Renewed{}));
    else out_.push(from, wire::encode(wire::Expired{}));
}

void ServerSide::on(const std::string& from, wire::Started&& m) {
    if (auto [proxy, id] = find(from); proxy) proxy->on_started(m);
}

void ServerSide::on(const std::string& from, wire::Revoked&& m) {
    if (auto [proxy, id] = find(from); proxy) proxy->on_revoked(m);
}

void ServerSide::on(const std::string& from, wire::Leaving&& m) {
    // It ends on purpose, after sending what it finished: what it still holds has not started.
    if (auto [proxy, id] = find(from); proxy) registry_.cancel(id, m.reason, /*clean=*/true);
}

void ServerSide::on(const std::string& from, wire::ResultMsg&& m) {
    auto [proxy, id] = find(from);
    // A result is proof of life: its renewals may be queued behind large results on the same connection.
    if (!id.empty()) registry_.renew(id);
    if (proxy) proxy->on_result(std::move(m)); // else: a server given up on; its jobs run elsewhere
}

void ServerSide::on(const std::string&, wire::OutputMsg&& m) {
    auto local = route_output ? route_output(std::move(m.chunks)) : std::move(m.chunks);
    if (hooks_.output && !local.empty()) hooks_.output(std::move(local));
}

void ServerSide::on_registry_event(const RegistryEvent& ev) {
    if (ev.what != RegistryEvent::What::left || ev.entry.kind != Kind::compute_server) return;
    std::lock_guard lk(mu_);
    for (auto it = server_id_.begin(); it != server_id_.end(); ++it)
        if (it->second == ev.entry.id) {
            // If it is still alive (a long pause), it hears so and registers again.
            out_.push(it->first, wire::encode(wire::Expired{}));
            by_routing_.erase(it->first);
            server_id_.erase(it);
            return;
        }
}

} // namespace dynexec::remote
