// A client of a running head, for a script or notebook outside the cluster:
// the same calls as the in-process Engine, over one CURVE-secured connection.
#pragma once

#include "wire/protocol.hpp"
#include "wire/security.hpp"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <set>

namespace dynexec::remote {

struct ClientOptions {
    std::string endpoint, server_public_key;
    wire::CurveKeys client_keys;
    double timeout = 10; // seconds to wait for any answer from the head
};

class Client {
public:
    explicit Client(ClientOptions options); // throws std::runtime_error if the head does not answer
    ~Client();

    JobId submit(const std::string& service, const Params& params, const std::string& owner,
                 const JobOptions& options = {});
    std::vector<JobId> submit_many(const std::string& service, const std::vector<Params>& params, const std::string& owner,
                                   const JobOptions& options = {});
    bool cancel(const JobId& id);
    bool kill(const JobId& id);
    std::vector<bool> cancel_many(const std::vector<JobId>& ids); // one request each, for now
    std::string state(const JobId& id); // as Engine::state
    Backlog backlog();
    // Live output of this client's jobs while they run (see Engine::poll_output), once set_echo(true).
    void set_echo(bool on);
    std::vector<OutputChunk> poll_output(std::size_t max, std::chrono::milliseconds timeout);
    std::vector<Result> poll(std::size_t max, std::chrono::milliseconds timeout);
    std::vector<ServerInfo> servers();
    void shutdown_cluster();
    // Waits until every job submitted through this client has come back (or `cancel_pending` them first).
    void shutdown(bool wait, bool cancel_pending);
    std::uint64_t submitted() const { return submitted_; }
    std::uint64_t delivered() const;

private:
    wire::Reply request(wire::Frames frames, std::uint64_t id);
    void run();
    void head_lost(); // fails every outstanding job: their futures must not wait for ever

    ClientOptions options_;
    zmq::context_t ctx_;
    zmq::socket_t sock_;
    class Outbox* out_; // owned; declared here to keep outbox.hpp private
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> next_id_{1}, submitted_{0};

    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::uint64_t, std::promise<wire::Reply>> waiting_;
    std::deque<Result> done_;
    std::uint64_t delivered_ = 0;
    std::set<JobId> outstanding_; // submitted, not back yet
    std::set<JobId> early_;       // back before their submit() returned
    std::deque<OutputChunk> output_; // live output, until polled (at most kLiveOutputBacklog bytes)
    std::size_t output_bytes_ = 0;
    std::condition_variable output_cv_;
    std::thread thread_;
};

} // namespace dynexec::remote
