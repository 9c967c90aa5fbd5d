// A client of a running head, for a script or notebook outside the cluster: the same calls as the
// in-process Engine, over one CURVE-secured connection. Submits are pipelined: a job gets its ID here
// (from blocks of IDs the head gives this client), is checked against the head's service signatures
// here, and travels in a batch with the others submitted meanwhile; nothing waits for the head but
// requests that need its answer (cancel, kill, state, servers...).
#pragma once

#include "common/result_queue.hpp"
#include "remote/head_contact.hpp"
#include "remote/outbox.hpp"
#include "wire/protocol.hpp"
#include "wire/security.hpp"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <unordered_set>
#include <variant>

namespace dynexec::remote {

struct ClientOptions {
    std::string endpoint, server_public_key;
    wire::CurveKeys client_keys;
    double timeout = 10; // seconds to wait for any answer from the head
};

class Client {
public:
    explicit Client(ClientOptions options); // throws std::runtime_error naming why the head did not welcome it
    ~Client();

    JobId submit(const std::string& service, const Params& params, const std::string& owner,
                 const JobOptions& options = {}, JobInfoPtr info = {});
    // All are checked before any is queued (InvalidJob names the one that is wrong). `infos`: none, or one
    // (possibly null) per job; they travel to the head, which archives them with the results.
    std::vector<JobId> submit_many(const std::string& service, const std::vector<Params>& params, const std::string& owner,
                                   const JobOptions& options = {}, const std::vector<JobInfoPtr>& infos = {});
    // Jobs submitted from now on that name these objects bring them again (see common/objects.hpp).
    void release(const std::vector<std::string>& keys);
    bool cancel(const JobId& id);
    std::vector<bool> cancel_many(const std::vector<JobId>& ids); // one request
    bool kill(const JobId& id);
    std::string state(const JobId& id); // as Engine::state
    Backlog backlog();
    // Live output of this client's jobs while they run (see Engine::poll_output), once set_echo(true).
    void set_echo(bool on);
    std::vector<OutputChunk> poll_output(std::size_t max, std::chrono::milliseconds timeout);
    std::vector<Result> poll(std::size_t max, std::chrono::milliseconds timeout);
    // As Engine's: a caller waiting on one job takes its result itself (common/result_queue.hpp).
    bool expect(const JobId& id);
    std::optional<Result> await(const JobId& id, std::chrono::milliseconds timeout);
    void forget(const JobId& id);
    std::vector<ServerInfo> servers();
    void shutdown_cluster();
    // Waits until every job submitted through this client has come back (or `cancel_pending` them first).
    void shutdown(bool wait, bool cancel_pending);
    std::uint64_t submitted() const { return submitted_; }
    std::uint64_t delivered() const;

private:
    using Answer = std::variant<wire::ErrorReply, wire::WelcomeClient, wire::Cancelled, wire::Killed, wire::JobStateReply,
                                wire::BacklogReply, wire::ServersReply, wire::Done, wire::ServicesReply>;
    template <class Reply, class Request> Reply request(Request m);
    void send_locked(wire::Frames frames); // after the submits queued before it. Needs mu_.
    void flush_submits_locked();            // Needs mu_.
    void run();
    void on_message(wire::Frames& frames);
    void answer(std::uint64_t request, Answer a);
    void head_lost(const std::string& why); // fails every outstanding job and request
    ServicePtr service(const std::string& name);
    std::vector<JobId> take_ids_locked(std::unique_lock<std::mutex>& lk, std::size_t n);
    Params objects_sent_locked(Params params); // Needs mu_.

    ClientOptions options_;
    zmq::context_t ctx_;
    zmq::socket_t sock_;
    Outbox out_;
    std::unique_ptr<class Loop> loop_;
    std::unique_ptr<HeadWatch> watch_; // used on the loop's thread only
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> next_request_{1}, submitted_{0};
    std::atomic<bool> refused_key_{false};

    std::mutex mu_;
    std::condition_variable cv_;     // results, job IDs, or the head lost
    std::string lost_;               // why the head counts as gone (then every call fails)
    std::string session_;
    std::map<std::string, ServicePtr> services_;
    std::deque<wire::IdBlock> ids_; // unused job IDs
    std::uint64_t ids_left_ = 0;
    bool asked_ids_ = false;
    std::deque<wire::Submit> unsent_; // batches the loop sends next
    std::map<std::uint64_t, std::promise<Answer>> waiting_;
    ResultQueue done_; // results for this process's callers
    std::uint64_t delivered_ = 0;
    std::unordered_set<JobId> outstanding_; // submitted, not back yet
    std::unordered_set<std::string> sent_;  // objects the head holds for this client: sent as None
    std::deque<OutputChunk> output_; // live output, until polled (at most kLiveOutputBacklog bytes)
    std::size_t output_bytes_ = 0;
    std::condition_variable output_cv_;
    std::thread thread_;
};

} // namespace dynexec::remote
