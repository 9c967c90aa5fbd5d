#include "remote/server_host.hpp"

#include "common/host.hpp"
#include "remote/outbox.hpp"
#include "server/compute_server.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <iostream>

namespace dynexec::remote {
namespace {

using Clock = std::chrono::steady_clock;

// Jobs sent here and not finished: the head may revoke one that has not started.
struct Held {
    std::mutex mu;
    std::unordered_map<JobId, JobPtr> jobs;
};

// Finished jobs go back to the head through the socket's thread.
struct SendBack final : CompletionSink {
    Outbox& out;
    std::atomic<std::uint64_t>& done;
    Held& held;
    SendBack(Outbox& o, std::atomic<std::uint64_t>& d, Held& h) : out(o), done(d), held(h) {}
    void complete(Result r, int attempt) override {
        ++done;
        {
            std::lock_guard lk(held.mu);
            held.jobs.erase(r.job_id);
        }
        out.push("", wire::encode(wire::ResultMsg{std::move(r), attempt}));
    }
    // The head's copy of the job says running from now: cancel() and running() tell the truth.
    void started(const JobId& id, int attempt) override {
        out.push("", wire::encode(wire::Type::started, wire::Dispatch{id, attempt}));
    }
};

// Live output while echo is on, batched for the socket's thread. Shared: a job may outlive run().
struct LiveOutput {
    std::atomic<bool> echo{false};
    std::mutex mu;
    OutputBatcher batcher;
    void send(Outbox& out) { // under mu: batches reach the outbox in order
        if (!batcher.empty()) out.push("", wire::encode(wire::OutputMsg{batcher.take()}));
    }
};

} // namespace

ServerHost::ServerHost(HostOptions options) : options_(std::move(options)) {}

std::string ServerHost::id() const {
    std::lock_guard lk(mu_);
    return id_;
}

int ServerHost::run() {
    zmq::context_t ctx;
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    if (wire::needs_curve(options_.endpoint)) wire::make_curve_client(sock, options_.server_public_key, options_.client_keys);
    sock.set(zmq::sockopt::linger, 2000); // results already queued still reach the head
    sock.set(zmq::sockopt::sndtimeo, 1000); // no head to send to (gone, or it refused us): drop, do not hang
    sock.set(zmq::sockopt::sndhwm, 0);
    sock.set(zmq::sockopt::rcvhwm, 0);
    sock.connect(options_.endpoint);

    Outbox out;
    auto& catalog = ServiceCatalog::process();
    // Owned by a raw pointer on purpose: leaving must not wait for a job the head will run elsewhere.
    auto live = std::make_shared<LiveOutput>();
    CaptureOptions capture{options_.capture_output, options_.capture_output && options_.slots == 1,
                           JobOutput::kDefaultLimit, {}};
    capture.live = [live, &out](const JobId& id, int stream, std::string_view data, bool final) {
        if (!live->echo.load(std::memory_order_relaxed)) return; // echo off: nothing is sent
        std::lock_guard lk(live->mu);
        if (live->batcher.add(id, stream, data, final, SteadyClock::instance().now())) live->send(out);
    };
    ComputeServer::Options server_options;
    server_options.slots = options_.slots;
    server_options.threads = options_.threads;
    server_options.capture = std::move(capture);
    auto* server = new ComputeServer(std::move(server_options), catalog);
    Held held;
    auto sink = std::make_shared<SendBack>(out, jobs_done_, held);

    auto hello = [&](wire::Type type = wire::Type::hello_server) {
        wire::HelloServer h{hostname(), getpid(), options_.slots, {}, options_.replaces_pid, options_.replaced_because};
        for (auto& s : catalog.all()) h.services.push_back({s->name, s->doc, s->params, {}});
        auto frames = wire::encode(h, type);
        send_to(sock, "", frames);
    };
    hello();
    // Between a hello and its welcome, more `expired` answers (to renewals sent before) must not register
    // this server a second time; a hello left unanswered for long is sent again.
    bool registering = true;
    auto hello_sent = Clock::now();

    auto renew_every = std::chrono::milliseconds(250);
    auto head_timeout = std::chrono::duration<double>(options_.head_timeout);
    auto last_heard = Clock::now();
    auto next_renew = Clock::now() + renew_every;
    int code = 0;
    zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, out.fd(), ZMQ_POLLIN, 0}};
    wire::Gather gather;
    while (!stop_) {
        poll_for(items, 2, std::chrono::milliseconds(50));
        if (items[0].revents & ZMQ_POLLIN) {
            while (!stop_) { // once told to stop, nothing after it counts (an `expired` must not register us again)
                wire::Frames frames;
                if (!zmq::recv_multipart(sock, std::back_inserter(frames), zmq::recv_flags::dontwait)) break;
                last_heard = Clock::now();
                try {
                    if (!gather.whole("", frames)) { // a piece of a large message (wire/chunks.hpp)
                        if (Clock::now() >= next_renew) break; // renewals go out while pieces keep coming
                        continue;
                    }
                    switch (wire::type_of(frames)) {
                    case wire::Type::welcome: {
                        auto w = wire::decode<wire::Welcome>(frames);
                        registering = false;
                        std::lock_guard lk(mu_);
                        id_ = w.id;
                        renew_every = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::duration<double>(w.renew_seconds));
                        head_timeout = std::max(head_timeout, std::chrono::duration<double>(3 * w.lease_seconds));
                        break;
                    }
                    case wire::Type::job: {
                        auto m = wire::decode<wire::JobMsg>(frames);
                        {
                            std::lock_guard lk(held.mu);
                            held.jobs[m.job->id] = m.job;
                        }
                        server->run(std::move(m.job), m.attempt, sink);
                        break;
                    }
                    case wire::Type::revoke: { // it runs elsewhere or is cancelled, unless it has started here
                        auto r = wire::decode<wire::Dispatch>(frames);
                        bool ok = false;
                        {
                            std::lock_guard lk(held.mu);
                            if (auto it = held.jobs.find(r.job_id); it != held.jobs.end() && it->second->attempt() == r.attempt) {
                                ok = it->second->try_revoke(r.attempt);
                                if (ok) held.jobs.erase(it);
                            }
                        }
                        auto answer = wire::encode(wire::Revoked{r.job_id, r.attempt, ok});
                        send_to(sock, "", answer);
                        break;
                    }
                    case wire::Type::stop_job: {
                        auto m = wire::decode<wire::StopJob>(frames);
                        if (m.why != Status::killed && m.why != Status::timeout)
                            throw std::runtime_error(fmt::format("stop_job for {} with status {}", m.job_id,
                                                                 status_name(m.why)));
                        JobPtr queued;
                        {
                            std::lock_guard lk(held.mu);
                            if (auto it = held.jobs.find(m.job_id); it != held.jobs.end() && it->second->attempt() == m.attempt &&
                                                                     it->second->try_revoke(m.attempt)) {
                                queued = it->second;
                                held.jobs.erase(it);
                            }
                        }
                        if (queued) { // not started: it never will
                            auto r = result_without_run(*queued, Status::cancelled, "CancelledError",
                                                        "killed before it started");
                            auto reply = wire::encode(wire::ResultMsg{std::move(r), m.attempt});
                            send_to(sock, "", reply);
                        } else {
                            server->stop(m.job_id, m.attempt, m.why);
                        }
                        break;
                    }
                    case wire::Type::expired: // our lease lapsed: register anew, once
                        if (!registering || Clock::now() - hello_sent > std::chrono::seconds(2)) {
                            registering = true;
                            hello_sent = Clock::now();
                            hello();
                        }
                        break;
                    case wire::Type::load_plugin: {
                        auto path = wire::decode<wire::Request>(frames).job_id;
                        try {
                            catalog.load_plugin(path);
                        } catch (const std::exception& e) {
                            std::cerr << "dynexec server: " << e.what() << std::endl;
                        }
                        hello(wire::Type::offer);
                        break;
                    }
                    case wire::Type::echo:
                        live->echo = wire::decode<wire::Request>(frames).id != 0;
                        break;
                    case wire::Type::stop:
                        stop_ = true;
                        break;
                    case wire::Type::renewed:
                        break;
                    default:
                        break;
                    }
                } catch (const std::exception& e) {
                    std::cerr << "dynexec server: dropped a message: " << e.what() << std::endl;
                }
            }
        }
        if (items[1].revents & ZMQ_POLLIN)
            for (auto& item : out.take()) send_to(sock, "", item.frames);
        // Time limits; a job that would not stop holds a thread (a Python job always does): this process
        // ends so that its supervisor starts a fresh one, after saying so and sending what finished.
        if (server->enforce() > 0) {
            for (auto& item : out.take()) send_to(sock, "", item.frames);
            auto bye = wire::encode(wire::Leaving{"ended to stop a job that was killed or timed out"});
            send_to(sock, "", bye);
            code = 4;
            break;
        }
        auto now = Clock::now();
        if (live->echo) {
            std::lock_guard lk(live->mu);
            if (live->batcher.due(now)) live->send(out);
        }
        if (now >= next_renew) {
            auto frames = wire::encode(wire::Renew{server->stats()});
            send_to(sock, "", frames);
            next_renew = now + renew_every;
        }
        if (now - last_heard > head_timeout) {
            std::cerr << fmt::format("dynexec server: no word from the head at {} for {:.1f} s; leaving\n",
                                     options_.endpoint, std::chrono::duration<double>(now - last_heard).count());
            code = 2;
            break;
        }
        if (options_.parent_pid && getppid() != options_.parent_pid) {
            code = 3;
            break;
        }
    }
    for (auto& item : out.take()) send_to(sock, "", item.frames); // results finished meanwhile
    return code;
}

} // namespace dynexec::remote
