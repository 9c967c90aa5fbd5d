// The messages between dynexec processes, and their encoding on ZeroMQ.
// A message is a multipart: [type][msgpack body][one frame per numpy array].
// Array data travels in its own frames, sent from and received into place.
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

enum class Type : std::uint8_t {
    // compute server -> head
    hello_server = 1, // HelloServer
    renew,            // Renew
    result,           // ResultMsg
    offer,            // HelloServer: what it offers now (after loading a plugin)
    started,          // Dispatch: it is starting that dispatch of a job
    revoked,          // Revoked: the answer to a revoke
    leaving,          // Leaving: it ends now, cleanly (e.g. to stop a job that would not stop)
    output,           // OutputMsg: what running jobs printed, for live echo (sent only while echo is on)
    // head -> compute server
    welcome = 16, // Welcome
    expired,      // (empty): the lease is gone; register again
    job,          // JobMsg
    stop,         // (empty): leave now
    renewed,      // (empty): the lease was renewed; the head is alive
    load_plugin,  // Request (job_id = the plugin's path): load it, then offer its services
    revoke,       // Dispatch: do not start that dispatch of the job, if not started; answer with revoked
    stop_job,     // StopJob: stop that dispatch (running: killed or timeout; queued: it never starts)
    echo,         // Request (id = 1 on, 0 off): send what jobs print while they run (OutputMsg)
    // client -> head
    hello_client = 32, // HelloClient
    submit,            // Submit
    cancel,            // Request
    servers,           // Request
    shutdown,          // Request: stop the whole cluster
    kill,              // Request: stop a job (cancelled if not started, killed if running); Reply.flag
    state,             // Request: Reply.message is the job's state (queued, running) or empty if not unfinished
    backlog,           // Request: Reply.backlog
    // (echo, from a client: Request with job_id "on" or "off": its jobs' live output comes as OutputMsg)
    // head -> client
    reply = 48, // Reply
    results,    // Results
};

struct HelloServer {
    std::string host;
    int pid = 0;
    unsigned slots = 1;
    std::vector<ServiceDef> services; // signatures: fn is empty
    int replaces_pid = 0;             // a server process on this host that ended, which this one replaces
    std::string replaced_because;     // how it ended: its jobs are charged at once, not at lease expiry
};
struct Welcome {
    std::string id;
    double lease_seconds = 0, renew_seconds = 0;
};
struct Renew {
    ServerStats stats;
};
struct JobMsg {
    JobPtr job;
    int attempt = 0;
};
struct ResultMsg {
    Result result;
    int attempt = 0;
};
struct Dispatch {
    std::string job_id;
    int attempt = 0;
};
struct Revoked {
    std::string job_id;
    int attempt = 0;
    bool ok = false; // that dispatch never starts there
};
struct StopJob {
    std::string job_id;
    int attempt = 0;
    Status why = Status::killed;
};
struct Leaving {
    std::string reason;
};
struct HelloClient {
    std::string owner;
};
struct Request {
    std::uint64_t id = 0;
    std::string job_id; // cancel
};
struct Submit {
    std::uint64_t id = 0;
    std::string service;
    Params params;
    std::string owner;
    JobOptions options;
};
struct Reply {
    std::uint64_t id = 0;
    std::string error_type; // empty: success
    std::string message;    // the error, or the job ID of a submit
    bool flag = false;      // cancel: whether it was cancelled
    std::vector<ServerInfo> servers;
    Backlog backlog;
};
struct Results {
    std::vector<Result> results;
};
struct OutputMsg {
    std::vector<OutputChunk> chunks; // in the order written; data travels as bytes
};

Type type_of(const Frames& frames); // throws std::runtime_error on a malformed message

Frames encode(const HelloServer&, Type type = Type::hello_server);
Frames encode(const Welcome&);
Frames encode(const Renew&);
Frames encode(const JobMsg&);
Frames encode(const ResultMsg&);
Frames encode(const HelloClient&);
Frames encode(Type type, const Dispatch&); // started, revoke
Frames encode(const Revoked&);
Frames encode(const StopJob&);
Frames encode(const Leaving&);
Frames encode(Type type, const Request&);
Frames encode(const Submit&);
Frames encode(const Reply&);
Frames encode(const Results&);
Frames encode(const OutputMsg&);
Frames encode(Type type); // a message with no body

// Each throws std::runtime_error naming what is malformed. Arrays borrow their frames.
template <class T> T decode(Frames& frames);
// Decodes `frames` as the type it says it is, for the fuzz targets and tests; throws as decode does.
void decode_any(Frames& frames);

} // namespace dynexec::wire
