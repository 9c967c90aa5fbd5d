#include "remote/server_host.hpp"

#include "common/host.hpp"
#include "common/objects.hpp"
#include "remote/head_contact.hpp"
#include "remote/loop.hpp"
#include "server/compute_server.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <iostream>
#include <map>

namespace dynexec::remote {
namespace {

// What the jobs' callbacks reach, shared with them (a job given up on may finish after run() returned).
struct Channel {
    Outbox out;
    std::atomic<std::uint64_t> jobs_done{0};
    // Jobs sent here and not finished: the head may revoke one that has not started.
    std::mutex held_mu;
    std::unordered_map<JobId, JobPtr> held;
    // Live output while echo is on, batched for the socket's thread.
    std::atomic<bool> echo{false};
    std::mutex live_mu;
    OutputBatcher batcher;

    void send_output() { // under live_mu: batches reach the outbox in order
        if (!batcher.empty()) out.push("", wire::encode(wire::OutputMsg{batcher.take()}));
    }
    // The job if that dispatch of it is held here and had not started: it never will now.
    JobPtr revoke(const JobId& id, int attempt) {
        std::lock_guard lk(held_mu);
        auto it = held.find(id);
        if (it == held.end() || it->second->attempt() != attempt || !it->second->try_revoke(attempt)) return nullptr;
        auto job = std::move(it->second);
        held.erase(it);
        return job;
    }
};

// Finished jobs go back to the head through the socket's thread.
struct SendBack final : CompletionSink {
    std::shared_ptr<Channel> ch;
    explicit SendBack(std::shared_ptr<Channel> c) : ch(std::move(c)) {}
    void complete(Result r, int attempt) override {
        ++ch->jobs_done;
        {
            std::lock_guard lk(ch->held_mu);
            ch->held.erase(r.job_id);
        }
        ch->out.push("", wire::encode(wire::ResultMsg{std::move(r), attempt}));
    }
    // The head's copy of the job says running from now: cancel() and running() tell the truth.
    void started(const JobId& id, int attempt) override {
        ch->out.push("", wire::encode(wire::Started{id, attempt}));
    }
};

// The job's objects sent as None come from what this server keeps; those sent with data are kept. Returns the
// key of one it lacks (then the job fails), else empty.
std::string fill_objects(std::map<std::string, Value, std::less<>>& kept, Job& job) {
    if (object_keys(job.params).empty()) return {}; // most jobs: their parameters are not copied
    Params filled;
    bool changed = false;
    for (auto& [name, v] : job.params) {
        auto key = object_key(name);
        if (key.empty()) {
            filled.set(name, v);
        } else if (v.index() == 0) {
            auto it = kept.find(key);
            if (it == kept.end()) return std::string(key);
            filled.set(name, it->second);
            changed = true;
        } else {
            kept.insert_or_assign(std::string(key), v);
            filled.set(name, v);
        }
    }
    if (changed) job.params = std::move(filled);
    return {};
}

} // namespace

struct ServerHost::State {
    HostOptions options;
    std::atomic<bool> stop{false};
    mutable std::mutex mu;
    std::string id; // guarded by mu
    std::shared_ptr<Channel> ch = std::make_shared<Channel>();
};

ServerHost::ServerHost(HostOptions options) : state_(std::make_shared<State>()) { state_->options = std::move(options); }
ServerHost::~ServerHost() = default;

void ServerHost::stop() { state_->stop = true; }

std::string ServerHost::id() const {
    std::lock_guard lk(state_->mu);
    return state_->id;
}

std::uint64_t ServerHost::jobs_done() const { return state_->ch->jobs_done; }

int ServerHost::run() {
    auto& st = *state_;
    auto& opt = st.options;
    auto ch = st.ch;
    zmq::context_t ctx;
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    if (wire::needs_curve(opt.endpoint)) wire::make_curve_client(sock, opt.server_public_key, opt.client_keys);
    configure_socket(sock, std::chrono::milliseconds(2000)); // results already queued still reach the head
    sock.set(zmq::sockopt::sndtimeo, 1000); // no head to send to (gone, or it refused us): drop, do not hang
    sock.connect(opt.endpoint);
    Loop loop(sock, ch->out, "dynexec server");
    auto send = [&](wire::Frames frames) { send_to(sock, "", frames); };

    auto& catalog = ServiceCatalog::process();
    CaptureOptions capture{opt.capture_output, opt.capture_output && opt.slots == 1, JobOutput::kDefaultLimit, {}};
    capture.live = [ch](const JobId& id, int stream, std::string_view data, bool final) {
        if (!ch->echo.load(std::memory_order_relaxed)) return; // echo off: nothing is sent
        std::lock_guard lk(ch->live_mu);
        if (ch->batcher.add(id, stream, data, final, SteadyClock::instance().now())) ch->send_output();
    };
    ComputeServer::Options server_options;
    server_options.slots = opt.slots;
    server_options.threads = opt.threads;
    server_options.capture = std::move(capture);
    auto* server = new ComputeServer(std::move(server_options), catalog);
    auto sink = std::make_shared<SendBack>(ch);

    auto hello = [&](bool offer_only = false) {
        std::vector<ServiceDef> services;
        for (auto& s : catalog.all()) services.push_back({s->name, s->doc, s->params, {}});
        if (offer_only) return send(wire::encode(wire::Offer{std::move(services)}));
        send(wire::encode(wire::HelloServer{wire::kProtocolVersion, hostname(), getpid(), opt.slots, std::move(services),
                                            opt.replaces_pid, opt.replaced_because}));
    };
    LeaseKeeper lease(SteadyClock::instance(), from_seconds(opt.head_timeout), std::chrono::milliseconds(250));
    hello();
    lease.hello_sent();

    int code = 0;
    std::map<std::string, Value, std::less<>> objects; // sent once by the head, kept until it says Forget
    auto on_message = [&](const std::string&, wire::Frames& frames) {
        if (st.stop) return; // once told to stop, nothing after it counts (an `expired` must not register us again)
        lease.heard();
        bool known = wire::visit<wire::Welcome, wire::Refused, wire::JobMsg, wire::Forget, wire::Revoke, wire::StopJob,
                                 wire::Expired, wire::LoadPlugin, wire::Echo, wire::Stop, wire::Renewed>(frames, [&](auto&& m) {
            using M = std::decay_t<decltype(m)>;
            if constexpr (std::is_same_v<M, wire::Welcome>) {
                lease.welcomed(from_seconds(m.lease_seconds), from_seconds(m.renew_seconds));
                std::lock_guard lk(st.mu);
                st.id = m.id;
            } else if constexpr (std::is_same_v<M, wire::Refused>) {
                std::cerr << "dynexec server: the head at " << opt.endpoint << " refused this server: " << m.reason
                          << std::endl;
                code = 5;
                st.stop = true;
            } else if constexpr (std::is_same_v<M, wire::JobMsg>) {
                if (auto missing = fill_objects(objects, *m.job); !missing.empty()) {
                    auto r = result_without_run(*m.job, Status::error, "dynexec.ObjectMissing",
                                                fmt::format("job {}: compute server {} (pid {}) has no object {} "
                                                            "(the head sent it as kept here)", m.job->id, hostname(),
                                                            getpid(), missing));
                    send(wire::encode(wire::ResultMsg{std::move(r), m.attempt}));
                    return;
                }
                {
                    std::lock_guard lk(ch->held_mu);
                    ch->held[m.job->id] = m.job;
                }
                server->run(std::move(m.job), m.attempt, sink);
            } else if constexpr (std::is_same_v<M, wire::Forget>) {
                for (auto& k : m.keys) objects.erase(k);
            } else if constexpr (std::is_same_v<M, wire::Revoke>) { // it runs elsewhere or is cancelled, unless started
                bool ok = ch->revoke(m.job_id, m.attempt) != nullptr;
                send(wire::encode(wire::Revoked{m.job_id, m.attempt, ok}));
            } else if constexpr (std::is_same_v<M, wire::StopJob>) {
                if (m.why != Status::killed && m.why != Status::timeout)
                    throw std::runtime_error(
                        fmt::format("stop_job for {} with status {}", m.job_id, status_name(m.why)));
                if (auto queued = ch->revoke(m.job_id, m.attempt)) { // not started: it never will
                    auto r = result_without_run(*queued, Status::cancelled, "CancelledError", "killed before it started");
                    send(wire::encode(wire::ResultMsg{std::move(r), m.attempt}));
                } else {
                    server->stop(m.job_id, m.attempt, m.why);
                }
            } else if constexpr (std::is_same_v<M, wire::Expired>) { // our lease lapsed: register anew, once
                if (lease.expired()) hello();
            } else if constexpr (std::is_same_v<M, wire::LoadPlugin>) {
                try {
                    catalog.load_plugin(m.path);
                } catch (const std::exception& e) {
                    std::cerr << "dynexec server: " << e.what() << std::endl;
                }
                hello(/*offer_only=*/true);
            } else if constexpr (std::is_same_v<M, wire::Echo>) {
                ch->echo = m.on;
            } else if constexpr (std::is_same_v<M, wire::Stop>) {
                st.stop = true;
            }
        });
        if (!known)
            throw std::runtime_error(fmt::format("a {} message is not for a compute server", wire::type_name(wire::type_of(frames))));
    };
    auto on_turn = [&] {
        // Time limits; a job that would not stop holds a thread (a Python job always does): this process
        // ends so that its supervisor starts a fresh one, after saying so and sending what finished.
        if (server->enforce() > 0) {
            loop.flush();
            send(wire::encode(wire::Leaving{"ended to stop a job that was killed or timed out"}));
            code = 4;
            return false;
        }
        if (ch->echo) {
            std::lock_guard lk(ch->live_mu);
            if (ch->batcher.due(SteadyClock::instance().now())) ch->send_output();
        }
        if (lease.renew_due()) send(wire::encode(wire::Renew{server->stats()}));
        if (lease.head_silent()) {
            std::cerr << fmt::format("dynexec server: no word from the head at {} for {:.1f} s; leaving\n",
                                     opt.endpoint, seconds(lease.silent_for()));
            code = 2;
            return false;
        }
        if (opt.parent_pid && getppid() != opt.parent_pid) {
            code = 3;
            return false;
        }
        return true;
    };
    loop.run(st.stop, std::chrono::milliseconds(50), on_message, on_turn);
    loop.flush(); // results finished meanwhile
    // Leaving must not wait for jobs the head runs elsewhere: a server still holding any is left to the
    // process's end (it points only to the shared channel and the process's catalog).
    if (server->stats().in_flight == 0) delete server;
    return code;
}

} // namespace dynexec::remote
