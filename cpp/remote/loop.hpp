// The one shape of every remote event loop (head, compute server, client): one thread owns one ZeroMQ
// socket (sockets are not thread-safe); other threads queue messages in its Outbox. Each turn waits for
// a message, something queued or the tick; hands each message received to the handler; runs the
// owner's timers (on_turn); then sends what is queued.
#pragma once

#include "remote/outbox.hpp"
#include "wire/chunks.hpp"

#include <functional>
#include <memory>
#include <string>

namespace dynexec::remote {

// Options every dynexec socket has: no high-water mark (the balancer bounds what is in flight, and a
// dropped job or result is never acceptable) and a bounded linger.
void configure_socket(zmq::socket_t& socket, std::chrono::milliseconds linger);

// What a connecting socket's monitor reports (see Loop::watch_connection).
enum class Connection { up, down, refused_key };

class Loop {
public:
    using OnMessage = std::function<void(const std::string& from, wire::Frames& frames)>;

    // `name` prefixes what the loop logs ("dynexec head"); `out` holds what other threads queue for the socket.
    Loop(zmq::socket_t& socket, Outbox& out, std::string name);
    ~Loop();

    Outbox& outbox() { return out_; }
    // Turns until `stop` is set (or on_turn returns false). `from` is the routing id on a ROUTER, "" else.
    // A handler that throws costs only that message: the loop logs it and goes on.
    void run(const std::atomic<bool>& stop, std::chrono::milliseconds tick, const OnMessage& on_message,
             const std::function<bool()>& on_turn);
    // Sends what is queued now: on the loop's thread, or once run() has returned.
    void flush();
    // Large messages arrive in pieces (wire/chunks.hpp), put together here. While one arrives, on_piece(from)
    // is called at most once per `every` (its sender is alive); a turn ends after kTurnBytes of pieces, so
    // that the owner's timers (renewals, pings) run while it arrives.
    void on_piece(std::chrono::steady_clock::duration every, std::function<void(const std::string& from)> f) {
        piece_every_ = every;
        on_piece_ = std::move(f);
    }
    static constexpr std::size_t kTurnBytes = std::size_t(16) << 20;
    // Reports connection changes of this (connecting) socket to on_event, on the loop's thread.
    void watch_connection(std::function<void(Connection)> on_event);

private:
    zmq::socket_t& socket_;
    std::string name_;
    bool router_;
    Outbox& out_;
    wire::Gather gather_;
    std::chrono::steady_clock::duration piece_every_{};
    std::function<void(const std::string&)> on_piece_;
    struct Monitor;
    std::unique_ptr<Monitor> monitor_;
};

} // namespace dynexec::remote
