// The messages between dynexec processes, and their encoding on ZeroMQ.
// A message is a multipart: [type][msgpack body][one frame per numpy array or large bytes].
// Array data travels in its own frames, sent from and received into place.
// Each message kind is one struct with its Type; each field means one thing.
#pragma once

#include "common/job.hpp"
#include "registry/lookup_registry.hpp"
#include "server/output_capture.hpp"
#include "services/catalog.hpp"

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dynexec::wire {

using Frames = std::vector<zmq::message_t>;

// Sent in both hello messages; a peer of another version is refused, naming both.
inline constexpr std::uint32_t kProtocolVersion = 4; // 4: a submitted job carries its JobInfo

enum class Type : std::uint8_t {
    // compute server -> head (1..15)
    hello_server = 1, offer, renew, result, started, revoked, leaving, output,
    // head -> compute server (16..31)
    welcome = 16, refused, expired, job, stop, renewed, load_plugin, revoke, stop_job, echo, forget,
    // client -> head (32..47)
    hello_client = 32, submit, cancel, kill, state, backlog, servers, shutdown, watch_output, more_ids, services,
    release,
    // head -> client (48..63)
    welcome_client = 48, results, job_output, cancelled, killed, job_state, backlog_reply, servers_reply, done, error,
    ids, services_reply,
};

// ---- compute server -> head --------------------------------------------------------------------
struct HelloServer {
    static constexpr Type type = Type::hello_server;
    std::uint32_t version = kProtocolVersion;
    std::string host;
    int pid = 0;
    unsigned slots = 1;
    std::vector<ServiceDef> services; // signatures: fn is empty
    int replaces_pid = 0;             // a server process on this host that ended, which this one replaces
    std::string replaced_because;     // how it ended: its jobs are charged at once, not at lease expiry
};
struct Offer { // what it offers now (after loading a plugin)
    static constexpr Type type = Type::offer;
    std::vector<ServiceDef> services;
};
struct Renew {
    static constexpr Type type = Type::renew;
    ServerStats stats;
};
struct ResultMsg {
    static constexpr Type type = Type::result;
    Result result;
    int attempt = 0;
};
struct Started { // it is starting that dispatch of a job
    static constexpr Type type = Type::started;
    std::string job_id;
    int attempt = 0;
};
struct Revoked { // the answer to a Revoke
    static constexpr Type type = Type::revoked;
    std::string job_id;
    int attempt = 0;
    bool ok = false; // that dispatch never starts there
};
struct Leaving { // it ends now, cleanly (e.g. to stop a job that would not stop)
    static constexpr Type type = Type::leaving;
    std::string reason;
};
struct OutputMsg { // what running jobs printed, for live echo (sent only while echo is on)
    static constexpr Type type = Type::output;
    std::vector<OutputChunk> chunks; // in the order written; data travels as bytes
};

// ---- head -> compute server --------------------------------------------------------------------
struct Welcome {
    static constexpr Type type = Type::welcome;
    std::uint32_t version = kProtocolVersion;
    std::string id;
    double lease_seconds = 0, renew_seconds = 0;
};
struct Refused { // the head will not take this server (another protocol version, a service conflict)
    static constexpr Type type = Type::refused;
    std::string reason;
};
struct Expired { // the lease is gone: register again
    static constexpr Type type = Type::expired;
};
struct JobMsg {
    static constexpr Type type = Type::job;
    JobPtr job;
    int attempt = 0;
    // Sending only: object parameters (common/objects.hpp) the server keeps already, sent as None.
    std::vector<std::string> cached;
};
struct Stop { // leave now
    static constexpr Type type = Type::stop;
};
struct Renewed { // the lease was renewed: the head is alive
    static constexpr Type type = Type::renewed;
};
struct LoadPlugin { // load it, then Offer its services
    static constexpr Type type = Type::load_plugin;
    std::string path;
};
struct Revoke { // do not start that dispatch of the job, if not started; answer with Revoked
    static constexpr Type type = Type::revoke;
    std::string job_id;
    int attempt = 0;
};
struct StopJob { // stop that dispatch (running: killed or timeout; queued: it never starts)
    static constexpr Type type = Type::stop_job;
    std::string job_id;
    int attempt = 0;
    Status why = Status::killed;
};
struct Echo { // send what jobs print while they run (OutputMsg), or stop sending it
    static constexpr Type type = Type::echo;
    bool on = false;
};
struct Forget { // objects (common/objects.hpp) no job will need any more: drop them
    static constexpr Type type = Type::forget;
    std::vector<std::string> keys;
};

// ---- client -> head ----------------------------------------------------------------------------
// Requests carry an ID that their answer repeats; submits have none: they are not answered, their
// results are (a job the head refuses comes back as a failed result).
struct HelloClient {
    static constexpr Type type = Type::hello_client;
    std::uint32_t version = kProtocolVersion;
    std::string owner;
};
struct SubmitJob {
    JobId id; // from a block of IDs the head gave this client
    std::string service;
    Params params;
    JobOptions options;
    JobInfo info; // what the job was, for the archive; the head checks it (ClientSide::on(Submit))
};
struct Submit {
    static constexpr Type type = Type::submit;
    std::string owner;
    std::vector<SubmitJob> jobs;
};
struct Cancel {
    static constexpr Type type = Type::cancel;
    std::uint64_t request = 0;
    std::vector<JobId> job_ids;
};
struct Kill { // cancelled if not started, killed if running
    static constexpr Type type = Type::kill;
    std::uint64_t request = 0;
    JobId job_id;
};
struct StateQuery {
    static constexpr Type type = Type::state;
    std::uint64_t request = 0;
    JobId job_id;
};
struct BacklogQuery {
    static constexpr Type type = Type::backlog;
    std::uint64_t request = 0;
};
struct ServersQuery { // also the client's ping
    static constexpr Type type = Type::servers;
    std::uint64_t request = 0;
};
struct ShutdownCluster {
    static constexpr Type type = Type::shutdown;
    std::uint64_t request = 0;
};
struct WatchOutput { // this client's jobs' live output comes as ClientOutput, or stops coming
    static constexpr Type type = Type::watch_output;
    std::uint64_t request = 0;
    bool on = false;
};
struct MoreIds {
    static constexpr Type type = Type::more_ids;
    std::uint64_t request = 0;
    std::uint64_t count = 0;
};
struct ServicesQuery {
    static constexpr Type type = Type::services;
    std::uint64_t request = 0;
};
struct Release { // this client sends no more jobs as naming these objects it sent before (not answered)
    static constexpr Type type = Type::release;
    std::vector<std::string> keys;
};

// ---- head -> client ----------------------------------------------------------------------------
// Job IDs a head hands a client at a time; a client asks for more when half are used (one MoreIds gets at most 16 blocks).
inline constexpr std::uint64_t kIdBlock = 1 << 16;
inline constexpr std::uint64_t kMaxIdsAsked = 16 * kIdBlock;
struct IdBlock { // job IDs <session>-<first> .. <session>-<first + count - 1>, for this client alone
    std::uint64_t first = 0, count = 0;
};
struct WelcomeClient {
    static constexpr Type type = Type::welcome_client;
    std::uint32_t version = kProtocolVersion;
    std::string session;
    std::vector<ServiceDef> services; // what the head accepts jobs for (signatures)
    IdBlock ids;
};
struct Results {
    static constexpr Type type = Type::results;
    std::vector<Result> results;
};
struct ClientOutput { // live output of this client's jobs
    static constexpr Type type = Type::job_output;
    std::vector<OutputChunk> chunks;
};
struct Cancelled {
    static constexpr Type type = Type::cancelled;
    std::uint64_t request = 0;
    std::vector<std::uint8_t> cancelled; // per job of the Cancel: 1 = it never starts
};
struct Killed {
    static constexpr Type type = Type::killed;
    std::uint64_t request = 0;
    bool killed = false;
};
struct JobStateReply {
    static constexpr Type type = Type::job_state;
    std::uint64_t request = 0;
    std::string state; // "queued", "running", or empty once finished (or unknown)
};
struct BacklogReply {
    static constexpr Type type = Type::backlog_reply;
    std::uint64_t request = 0;
    Backlog backlog;
};
struct ServersReply {
    static constexpr Type type = Type::servers_reply;
    std::uint64_t request = 0;
    std::vector<ServerInfo> servers;
};
struct Done { // a request without an answer of its own succeeded
    static constexpr Type type = Type::done;
    std::uint64_t request = 0;
};
struct ErrorReply { // a request failed (or a hello was refused: request 0)
    static constexpr Type type = Type::error;
    std::uint64_t request = 0;
    std::string error_type; // UnknownServiceError, InvalidJobError, ShutDownError, ValueError, RuntimeError
    std::string message;
};
struct IdsReply {
    static constexpr Type type = Type::ids;
    std::uint64_t request = 0;
    IdBlock ids;
};
struct ServicesReply {
    static constexpr Type type = Type::services_reply;
    std::uint64_t request = 0;
    std::vector<ServiceDef> services;
};

Type type_of(const Frames& frames); // throws std::runtime_error on a malformed message
const char* type_name(Type type);   // for messages and logs; "unknown" for a value no message has

template <class M> Frames encode(const M& m);
// Throws std::runtime_error naming what is malformed. Arrays borrow their frames.
template <class M> M decode(Frames& frames);

// Decodes `frames` as whichever of `M...` its type says and calls `handle(message)`; false if none is.
template <class... M, class Handle> bool visit(Frames& frames, Handle&& handle) {
    auto t = type_of(frames);
    return ((t == M::type ? (handle(decode<M>(frames)), true) : false) || ...);
}

// Decodes a message of any type, discarding it (what the fuzzer drives). Throws as decode does.
void decode_any(Frames& frames);

} // namespace dynexec::wire
