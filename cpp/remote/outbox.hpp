// Messages queued by any thread for the one thread that owns a ZeroMQ socket
// (sockets are not thread-safe). An eventfd wakes that thread's poll.
#pragma once

#include "wire/chunks.hpp"
#include "wire/protocol.hpp"
#include "wire/chunks.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <deque>
#include <mutex>

namespace dynexec::remote {

class Outbox {
public:
    struct Item {
        std::string to; // routing id; empty on a DEALER
        wire::Frames frames;
    };
    Outbox() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
        if (fd_ < 0) throw std::runtime_error("eventfd failed");
    }
    ~Outbox() { close(fd_); }
    Outbox(const Outbox&) = delete;
    Outbox& operator=(const Outbox&) = delete;

    void push(std::string to, wire::Frames frames) {
        bool wake;
        {
            std::lock_guard lk(mu_);
            wake = items_.empty(); // otherwise the owner is already woken for the items before
            items_.push_back({std::move(to), std::move(frames)});
        }
        if (wake) {
            std::uint64_t one = 1;
            (void)!write(fd_, &one, sizeof one);
        }
    }
    // Wakes the owner without a message (it has something of its own to send).
    void wake() {
        std::uint64_t one = 1;
        (void)!write(fd_, &one, sizeof one);
    }
    std::deque<Item> take() {
        std::uint64_t n;
        (void)!read(fd_, &n, sizeof n);
        std::lock_guard lk(mu_);
        return std::exchange(items_, {});
    }
    int fd() const { return fd_; }

private:
    int fd_;
    std::mutex mu_;
    std::deque<Item> items_;
};

// zmq::poll that treats a signal's interruption as a timeout: the loops check their flags and go on.
inline void poll_for(zmq::pollitem_t* items, std::size_t n, std::chrono::milliseconds timeout) {
    try {
        zmq::poll(items, n, timeout);
    } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) throw;
        for (std::size_t i = 0; i < n; ++i) items[i].revents = 0;
    }
}

// Sends a message on a ROUTER (to a routing id) or a DEALER (to == ""). A send
// never blocks (no high-water mark), so only a signal can interrupt it: retried.
inline void send_to(zmq::socket_t& s, const std::string& to, wire::Frames& frames) {
    auto send = [&](auto&& part, zmq::send_flags flags) {
        for (;;) try {
                s.send(part, flags);
                return;
            } catch (const zmq::error_t& e) {
                if (e.num() != EINTR) throw;
            }
    };
    auto send_one = [&](wire::Frames& parts) {
        if (!to.empty()) send(zmq::buffer(to), zmq::send_flags::sndmore);
        for (std::size_t i = 0; i < parts.size(); ++i)
            send(parts[i], i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    };
    if (!wire::needs_chunks(frames)) return send_one(frames);
    wire::send_in_chunks(frames, [&](wire::Frames&& piece) { send_one(piece); }); // see wire/chunks.hpp
}

// The ZeroMQ context of a loop that may move large messages: CURVE encrypts on the I/O threads, so one
// connection's data does not hold up the others' control messages (leases, pings, cancels).
inline constexpr int kIoThreads = 2;

} // namespace dynexec::remote
