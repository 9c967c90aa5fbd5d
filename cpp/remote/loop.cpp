#include "remote/loop.hpp"

#include "common/turn.hpp"
#include "wire/limits.hpp"

#include <iostream>

namespace dynexec::remote {

void configure_socket(zmq::socket_t& socket, std::chrono::milliseconds linger) {
    socket.set(zmq::sockopt::linger, int(linger.count()));
    socket.set(zmq::sockopt::sndhwm, 0);
    socket.set(zmq::sockopt::rcvhwm, 0);
    // Refused before it is allocated: larger messages travel in pieces (wire/chunks.hpp), each bounded.
    socket.set(zmq::sockopt::maxmsgsize, std::int64_t(wire::kMaxMessageBytes));
    // No ZeroMQ heartbeats: a connection they drop (both ends paused, then resumed) comes back as a new peer,
    // losing what was queued on the old one. A peer that is gone closes its connection; one that is silent
    // is found by the lease (servers) and by pings (clients, see HeadWatch).
}

struct Loop::Monitor final : zmq::monitor_t {
    std::function<void(Connection)> on_event;
    void on_event_handshake_succeeded(const zmq_event_t&, const char*) override { on_event(Connection::up); }
    void on_event_disconnected(const zmq_event_t&, const char*) override { on_event(Connection::down); }
    void on_event_handshake_failed_auth(const zmq_event_t&, const char*) override { on_event(Connection::refused_key); }
    void on_event_handshake_failed_protocol(const zmq_event_t&, const char*) override {
        on_event(Connection::refused_key); // a CURVE handshake against the wrong server key fails this way
    }
};

Loop::Loop(zmq::socket_t& socket, Outbox& out, std::string name)
    : socket_(socket), name_(std::move(name)), router_(socket.get(zmq::sockopt::type) == ZMQ_ROUTER), out_(out) {}

Loop::~Loop() = default;

void Loop::watch_connection(std::function<void(Connection)> on_event) {
    static std::atomic<int> n{0};
    monitor_ = std::make_unique<Monitor>();
    monitor_->on_event = std::move(on_event);
    monitor_->init(socket_, "inproc://dynexec-monitor-" + std::to_string(n++),
                   ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL);
}

void Loop::flush() {
    for (auto& item : out_.take()) send_to(socket_, item.to, item.frames);
}

void Loop::run(const std::atomic<bool>& stop, std::chrono::milliseconds tick, const OnMessage& on_message,
               const std::function<bool()>& on_turn) {
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, out_.fd(), ZMQ_POLLIN, 0}};
    while (!stop) {
        poll_for(items, 2, tick);
        if (items[0].revents & ZMQ_POLLIN) {
            Turn turn; // what the messages defer (archiving their results) is done once, when they are all handled
            std::size_t piece_bytes = 0;
            for (int i = 0; i < 1024 && !stop && piece_bytes < kTurnBytes; ++i) { // a batch, then let the outbox go
                wire::Frames frames;
                if (!zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait)) break;
                std::string from;
                if (router_) {
                    if (frames.size() < 2) continue;
                    from = frames.front().to_string();
                    frames.erase(frames.begin());
                }
                try {
                    if (!gather_.whole(from, frames)) { // a piece of a large message
                        piece_bytes += wire::kChunkBytes;
                        if (on_piece_ && gather_.due(from, piece_every_)) on_piece_(from);
                        continue;
                    }
                    on_message(from, frames);
                } catch (const std::exception& e) {
                    std::cerr << name_ << ": dropped a message: " << e.what() << std::endl;
                }
            }
        }
        while (monitor_ && monitor_->check_event(0)) {
        }
        if (!on_turn()) break;
        flush();
    }
    flush();
}

} // namespace dynexec::remote
