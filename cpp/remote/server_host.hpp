// The compute-server side of a process that serves a remote head: registers on a lease over ZeroMQ,
// renews it, runs the jobs it is sent on its own ComputeServer and sends the results back.
#pragma once

#include "wire/security.hpp"

#include <atomic>
#include <memory>
#include <string>

namespace dynexec::remote {

struct HostOptions {
    std::string endpoint;          // the head's
    std::string server_public_key; // the head's CURVE key
    wire::CurveKeys client_keys;   // this compute server's credentials
    unsigned slots = 1, threads = 0;
    int parent_pid = 0;       // leave when this process is gone (0: no parent to watch)
    double head_timeout = 10; // leave after this long without a word from the head
    int replaces_pid = 0;     // the server process this one replaces, and how it ended (see HelloServer)
    std::string replaced_because;
    // Keep each job's stdout/stderr for its result (and echo it live when the head asks). With one slot, file
    // descriptors 1 and 2 are redirected around each job too: only for a process of its own (one host in it).
    bool capture_output = false;
};

class ServerHost {
public:
    explicit ServerHost(HostOptions options);
    ~ServerHost();
    // Serves until the head says stop (returns 0), falls silent (2), the parent dies (3), a job that was
    // stopped would not end (4: the process should exit, and be replaced), the head refuses it (5) or stop() (0).
    int run();
    void stop();
    std::string id() const;
    std::uint64_t jobs_done() const;

private:
    // Everything a job's callbacks reach lives here, shared with them: a job that outlives run() (it is
    // given up on, not waited for) never points into a finished stack frame.
    struct State;
    std::shared_ptr<State> state_;
};

} // namespace dynexec::remote
