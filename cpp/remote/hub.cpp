#include "remote/hub.hpp"

#include <fmt/format.h>

namespace dynexec::remote {

Hub::Hub(LookupRegistry& registry, HubOptions options, HubHooks hooks, Duration lease, Duration renew)
    : options_(std::move(options)), hooks_(std::move(hooks)), zap_(ctx_, options_.compute_server_public_key, options_.client_public_key),
      router_(ctx_, zmq::socket_type::router), loop_(router_, out_, "dynexec head"),
      servers_(registry, out_, hooks_, objects_, lease, renew), clients_(out_, hooks_, objects_) {
    if (wire::needs_curve(options_.bind)) wire::make_curve_server(router_, options_.server_keys);
    configure_socket(router_, std::chrono::milliseconds(1000));
    router_.bind(options_.bind);
    endpoint_ = router_.get(zmq::sockopt::last_endpoint);
    servers_.route_output = [this](std::vector<OutputChunk>&& chunks) {
        auto rest = clients_.route_output(std::move(chunks));
        if (!local_echo_) rest.clear();
        return rest;
    };
    clients_.on_dropped = [this](const std::vector<std::string>& keys) { servers_.forget(keys); };
    clients_.on_watching = [this](bool on) {
        clients_echo_ = on;
        echo_changed();
    };
    loop_.on_piece(std::chrono::duration_cast<std::chrono::steady_clock::duration>(renew),
                   [this](const std::string& from) { servers_.alive(from); });
    thread_ = std::thread([this, &registry] {
        wire::RoleGate gate(wire::needs_curve(options_.bind)); // a client may not pose as a server, nor the reverse
        loop_.run(stop_, std::chrono::milliseconds(100),
                  [this, &gate, &registry](const std::string& from, wire::Frames& frames) {
                      if (!gate.admit(from, frames)) return;
                      // While this thread handles a large message, the renewals behind it wait unread.
                      ExpiryPause pause(registry, wire::needs_chunks(frames));
                      auto type = std::uint8_t(wire::type_of(frames));
                      if (type < 16) servers_.handle(from, frames);
                      else if (type >= 32 && type < 48) clients_.handle(from, frames);
                      else throw std::runtime_error(fmt::format("a {} message is not for the head",
                                                                wire::type_name(wire::Type(type))));
                  },
                  [] { return true; });
    });
}

Hub::~Hub() {
    servers_.stop_all();
    stop_ = true;
    thread_.join();
}

void Hub::set_echo(bool on) {
    local_echo_ = on;
    echo_changed();
}

void Hub::echo_changed() { servers_.set_echo(local_echo_ || clients_echo_); }

void Hub::hold(const Params& params) {
    for (auto& [name, v] : params)
        if (auto key = object_key(name); !key.empty() && valid_object_key(key) && v.index() != 0)
            objects_.hold("", std::string(key), v);
}

void Hub::release(const std::vector<std::string>& keys) {
    if (auto dropped = objects_.release("", keys); !dropped.empty()) servers_.forget(dropped);
}

} // namespace dynexec::remote
