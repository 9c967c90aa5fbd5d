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
    output,           // OutputMsg: what running jobs printed, for live echo (sent only while echo is on)
    // head -> compute server
    welcome = 16, // Welcome
    expired,      // (empty): the lease is gone; register again
    job,          // JobMsg
    stop,         // (empty): leave now
    renewed,      // (empty): the lease was renewed; the head is alive
    load_plugin,  // Request (job_id = the plugin's path): load it, then offer its services
    revoke,       // Request (id = the attempt): do not start that dispatch of the job; it runs elsewhere
    echo,         // Request (id = 1 on, 0 off): send what jobs print while they run (OutputMsg)
    // client -> head
    hello_client = 32, // HelloClient
    submit,            // Submit
    cancel,            // Request
    servers,           // Request
    shutdown,          // Request: stop the whole cluster
    // head -> client
    reply = 48, // Reply
    results,    // Results
};

struct HelloServer {
    std::string host;
    int pid = 0;
    unsigned slots = 1;
    std::vector<ServiceDef> services; // signatures: fn is empty
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
};
struct Reply {
    std::uint64_t id = 0;
    std::string error_type; // empty: success
    std::string message;    // the error, or the job ID of a submit
    bool flag = false;      // cancel: whether it was cancelled
    std::vector<ServerInfo> servers;
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
Frames encode(Type type, const Request&);
Frames encode(const Submit&);
Frames encode(const Reply&);
Frames encode(const Results&);
Frames encode(const OutputMsg&);
Frames encode(Type type); // a message with no body

// Each throws std::runtime_error naming what is malformed. Arrays borrow their frames.
template <class T> T decode(Frames& frames);

} // namespace dynexec::wire
