#include "remote/hub.hpp"

#include "common/errors.hpp"

#include <fmt/format.h>

#include <iostream>

namespace dynexec::remote {

Hub::Hub(LookupRegistry& registry, HubOptions options, HubHooks hooks, Duration lease, Duration renew)
    : registry_(registry), options_(std::move(options)), hooks_(std::move(hooks)), lease_(lease), renew_(renew),
      zap_(ctx_, options_.client_public_key), router_(ctx_, zmq::socket_type::router) {
    if (wire::needs_curve(options_.bind)) wire::make_curve_server(router_, options_.server_keys);
    router_.set(zmq::sockopt::linger, 1000);
    router_.set(zmq::sockopt::sndhwm, 0); // never drop a job or a result: the balancer bounds what is in flight
    router_.set(zmq::sockopt::rcvhwm, 0);
    router_.bind(options_.bind);
    endpoint_ = router_.get(zmq::sockopt::last_endpoint);
    subscription_ = registry_.subscribe([this](const RegistryEvent& ev) { on_registry_event(ev); });
    thread_ = std::thread([this] { run(); });
}

Hub::~Hub() {
    registry_.unsubscribe(subscription_);
    stop_servers();
    stop_ = true;
    thread_.join();
}

void Hub::stop_servers() {
    std::lock_guard lk(mu_);
    for (auto& [routing, proxy] : by_routing_) out_.push(routing, wire::encode(wire::Type::stop));
}

bool Hub::stop_server(const std::string& server_id) {
    std::lock_guard lk(mu_);
    for (auto& [routing, id] : server_id_)
        if (id == server_id) {
            out_.push(routing, wire::encode(wire::Type::stop));
            return true;
        }
    return false;
}

void Hub::load_plugin(const std::string& path) {
    std::lock_guard lk(mu_);
    if (std::find(plugins_.begin(), plugins_.end(), path) == plugins_.end()) plugins_.push_back(path);
    for (auto& [routing, proxy] : by_routing_)
        out_.push(routing, wire::encode(wire::Type::load_plugin, wire::Request{0, path}));
}

void Hub::set_echo(bool on) {
    std::lock_guard lk(mu_);
    local_echo_ = on;
    servers_echo_locked();
}

void Hub::servers_echo_locked() {
    bool on = local_echo_ || !echo_clients_.empty();
    if (on == echo_) return;
    echo_ = on;
    for (auto& [routing, proxy] : by_routing_) out_.push(routing, wire::encode(wire::Type::echo, wire::Request{on, ""}));
}

void Hub::run() {
    zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, out_.fd(), ZMQ_POLLIN, 0}};
    auto flush = [&] {
        for (auto& item : out_.take()) send_to(router_, item.to, item.frames);
    };
    wire::Gather gather; // large messages arrive in pieces (wire/chunks.hpp)
    auto renew_while_arriving = [&](const std::string& from) {
        std::string id;
        {
            std::lock_guard lk(mu_);
            if (auto it = server_id_.find(from); it != server_id_.end()) id = it->second;
        }
        if (!id.empty()) registry_.renew(id); // its renewals wait behind the rest of this message
    };
    while (!stop_) {
        poll_for(items, 2, std::chrono::milliseconds(100));
        if (items[0].revents & ZMQ_POLLIN) {
            for (int i = 0; i < 1024; ++i) { // a batch, then let the outbox go
                wire::Frames frames;
                if (!zmq::recv_multipart(router_, std::back_inserter(frames), zmq::recv_flags::dontwait)) break;
                if (frames.size() < 2) continue;
                auto from = frames[0].to_string();
                frames.erase(frames.begin());
                try {
                    if (!gather.whole(from, frames)) { // a piece of a large message: its sender is alive
                        if (gather.due(from, std::chrono::duration_cast<std::chrono::steady_clock::duration>(renew_)))
                            renew_while_arriving(from);
                        continue;
                    }
                    // While this thread handles a large message, the renewals behind it wait unread.
                    ExpiryPause pause(registry_, wire::needs_chunks(frames));
                    handle(from, frames);
                } catch (const std::exception& e) {
                    std::cerr << "dynexec head: dropped a message: " << e.what() << std::endl;
                }
            }
        }
        if (items[1].revents & ZMQ_POLLIN) flush();
    }
    flush();
}

void Hub::reply_error(const std::string& to, std::uint64_t id, const std::exception& e) {
    wire::Reply r;
    r.id = id;
    r.error_type = dynamic_cast<const UnknownService*>(&e)          ? "UnknownServiceError"
                   : dynamic_cast<const InvalidJob*>(&e)            ? "InvalidJobError"
                   : dynamic_cast<const ShutDown*>(&e)              ? "ShutDownError"
                   : dynamic_cast<const std::invalid_argument*>(&e) ? "ValueError"
                                                                    : "RuntimeError";
    r.message = e.what();
    out_.push(to, wire::encode(r));
}

// A client's request answered at once: `fill` sets the reply's fields.
template <class Fill> void Hub::answer(const std::string& to, wire::Frames& frames, Fill fill) {
    auto m = wire::decode<wire::Request>(frames);
    wire::Reply r;
    r.id = m.id;
    fill(m, r);
    out_.push(to, wire::encode(r));
}

void Hub::handle(const std::string& from, wire::Frames& frames) {
    switch (wire::type_of(frames)) {
    case wire::Type::hello_server: {
        auto hello = wire::decode<wire::HelloServer>(frames);
        if (hello.replaces_pid) // its predecessor died: what ran there is charged now, not at lease expiry
            for (auto& e : registry_.lookup(Kind::compute_server))
                if (e.pid == hello.replaces_pid && e.host == hello.host)
                    registry_.cancel(e.id, hello.replaced_because, /*clean=*/false, /*died=*/true);
        auto proxy = std::make_shared<RemoteServerProxy>(out_, from, std::max(1u, hello.slots));
        Registration reg;
        reg.kind = Kind::compute_server;
        reg.host = hello.host;
        reg.pid = hello.pid;
        for (auto& s : hello.services) reg.services.push_back(std::make_shared<const ServiceDef>(std::move(s)));
        reg.server = proxy;
        {
            std::lock_guard lk(mu_);
            by_routing_[from] = proxy; // before join: the first job may be sent from inside it
            if (echo_) out_.push(from, wire::encode(wire::Type::echo, wire::Request{1, ""})); // before any job
        }
        // join() may already send it waiting jobs; the server runs them whether or not it has been welcomed.
        auto id = registry_.join(std::move(reg), lease_).id;
        std::lock_guard lk(mu_);
        server_id_[from] = id;
        out_.push(from, wire::encode(wire::Welcome{id, seconds(lease_), seconds(renew_)}));
        for (auto& path : plugins_) out_.push(from, wire::encode(wire::Type::load_plugin, wire::Request{0, path}));
        break;
    }
    case wire::Type::offer: {
        auto offer = wire::decode<wire::HelloServer>(frames);
        std::vector<ServicePtr> services;
        for (auto& s : offer.services) services.push_back(std::make_shared<const ServiceDef>(std::move(s)));
        std::string id;
        {
            std::lock_guard lk(mu_);
            if (auto it = server_id_.find(from); it != server_id_.end()) id = it->second;
        }
        if (!id.empty()) registry_.set_services(id, std::move(services));
        break;
    }
    case wire::Type::renew: {
        auto m = wire::decode<wire::Renew>(frames);
        std::shared_ptr<RemoteServerProxy> proxy;
        std::string id;
        {
            std::lock_guard lk(mu_);
            auto it = server_id_.find(from);
            if (it != server_id_.end()) {
                id = it->second;
                proxy = by_routing_.at(from);
            }
        }
        // The registry keeps what the server publishes; the proxy counts results as they arrive, fresher.
        if (proxy && registry_.renew(id, m.stats)) {
            out_.push(from, wire::encode(wire::Type::renewed));
        } else {
            out_.push(from, wire::encode(wire::Type::expired));
        }
        break;
    }
    case wire::Type::started:
    case wire::Type::revoked:
    case wire::Type::leaving: {
        std::shared_ptr<RemoteServerProxy> proxy;
        std::string id;
        {
            std::lock_guard lk(mu_);
            if (auto it = by_routing_.find(from); it != by_routing_.end()) proxy = it->second;
            if (auto it = server_id_.find(from); it != server_id_.end()) id = it->second;
        }
        if (!proxy) break; // a server given up on
        auto type = wire::type_of(frames);
        if (type == wire::Type::started) proxy->on_started(wire::decode<wire::Dispatch>(frames));
        else if (type == wire::Type::revoked) proxy->on_revoked(wire::decode<wire::Revoked>(frames));
        else // it ends on purpose, after sending what it finished: what it still holds has not started
            registry_.cancel(id, wire::decode<wire::Leaving>(frames).reason, /*clean=*/true);
        break;
    }
    case wire::Type::result: {
        auto m = wire::decode<wire::ResultMsg>(frames);
        std::shared_ptr<RemoteServerProxy> proxy;
        std::string id;
        {
            std::lock_guard lk(mu_);
            if (auto it = by_routing_.find(from); it != by_routing_.end()) proxy = it->second;
            if (auto it = server_id_.find(from); it != server_id_.end()) id = it->second;
        }
        // A result is proof of life: its renewals may be queued behind large results on the same connection.
        if (!id.empty()) registry_.renew(id);
        if (proxy) proxy->on_result(std::move(m)); // else: a server given up on; its jobs run elsewhere
        break;
    }
    case wire::Type::output: {
        auto m = wire::decode<wire::OutputMsg>(frames);
        // Output of a remote client's job goes to that client; the rest to this process.
        std::map<std::string, wire::OutputMsg> to_clients;
        std::vector<OutputChunk> local;
        {
            std::lock_guard lk(mu_);
            for (auto& c : m.chunks) {
                auto it = client_of_.find(c.job_id);
                if (it == client_of_.end()) {
                    if (local_echo_) local.push_back(std::move(c));
                } else if (echo_clients_.count(it->second)) {
                    to_clients[it->second].chunks.push_back(std::move(c));
                }
            }
        }
        for (auto& [client, msg] : to_clients) out_.push(client, wire::encode(msg));
        if (hooks_.output && !local.empty()) hooks_.output(std::move(local));
        break;
    }
    case wire::Type::echo: { // a client wants what its jobs print, while they run
        auto m = wire::decode<wire::Request>(frames); // job_id: "on" or "off"
        {
            std::lock_guard lk(mu_);
            if (m.job_id == "on") echo_clients_.insert(from);
            else echo_clients_.erase(from);
            servers_echo_locked(); // servers send output for every job while anyone wants some
        }
        wire::Reply r;
        r.id = m.id;
        out_.push(from, wire::encode(r));
        break;
    }
    case wire::Type::hello_client: {
        {
            std::lock_guard lk(mu_);
            clients_.insert(from);
        }
        out_.push(from, wire::encode(wire::Reply{}));
        break;
    }
    case wire::Type::submit: {
        auto m = wire::decode<wire::Submit>(frames);
        try {
            wire::Reply r;
            r.id = m.id;
            r.message = hooks_.submit(m.service, m.params, m.owner.empty() ? "remote" : m.owner, m.options,
                                      [&](const JobId& id) {
                                          std::lock_guard lk(mu_); // before the job can run: its result goes back to this client
                                          client_of_[id] = from;
                                      });
            out_.push(from, wire::encode(r));
        } catch (const std::exception& e) {
            reply_error(from, m.id, e);
        }
        break;
    }
    case wire::Type::cancel: {
        auto m = wire::decode<wire::Request>(frames);
        // A job queued on a remote server is cancelled once that server confirms, through this very thread:
        // the reply goes when the answer comes.
        hooks_.cancel(m.job_id, [this, from, id = m.id](bool ok) {
            wire::Reply r;
            r.id = id;
            r.flag = ok;
            out_.push(from, wire::encode(r));
        });
        break;
    }
    case wire::Type::kill:
        answer(from, frames, [&](const wire::Request& m, wire::Reply& r) { r.flag = hooks_.kill(m.job_id, Status::killed); });
        break;
    case wire::Type::backlog:
        answer(from, frames, [&](const wire::Request&, wire::Reply& r) { r.backlog = hooks_.backlog(); });
        break;
    case wire::Type::state:
        answer(from, frames, [&](const wire::Request& m, wire::Reply& r) {
            if (auto st = hooks_.state(m.job_id)) r.message = *st == JobState::running ? "running" : "queued";
        });
        break;
    case wire::Type::servers:
        answer(from, frames, [&](const wire::Request&, wire::Reply& r) { r.servers = hooks_.servers(); });
        break;
    case wire::Type::shutdown: {
        auto m = wire::decode<wire::Request>(frames);
        wire::Reply r;
        r.id = m.id;
        out_.push(from, wire::encode(r));
        std::thread(hooks_.shutdown).detach(); // it stops this very thread
        break;
    }
    default:
        throw std::runtime_error(fmt::format("unexpected message type {}", int(wire::type_of(frames))));
    }
}

void Hub::on_registry_event(const RegistryEvent& ev) {
    if (ev.what != RegistryEvent::What::left || ev.entry.kind != Kind::compute_server) return;
    std::lock_guard lk(mu_);
    for (auto it = server_id_.begin(); it != server_id_.end(); ++it)
        if (it->second == ev.entry.id) {
            // If it is still alive (a long pause), it hears so and registers again.
            out_.push(it->first, wire::encode(wire::Type::expired));
            by_routing_.erase(it->first);
            server_id_.erase(it);
            return;
        }
}

void Hub::route(std::vector<Result>& batch) {
    std::map<std::string, wire::Results> to_clients;
    {
        std::lock_guard lk(mu_);
        if (client_of_.empty()) return;
        std::vector<Result> local;
        for (auto& r : batch) {
            auto it = client_of_.find(r.job_id);
            if (it == client_of_.end()) {
                local.push_back(std::move(r));
                continue;
            }
            to_clients[it->second].results.push_back(std::move(r));
            client_of_.erase(it);
        }
        batch.swap(local);
    }
    for (auto& [client, results] : to_clients) out_.push(client, wire::encode(results));
}

} // namespace dynexec::remote
