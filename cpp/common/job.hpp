// A job and its result: what travels from the execution manager to a compute
// server and from there to the results manager.
#pragma once

#include "common/clock.hpp"

#include <dynexec/value.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace dynexec {

// A unique, sortable job ID: "<session>-<sequence>", where the session is 16
// Crockford base-32 characters (10 of start time in ms, 6 random) and the
// sequence is 10 decimal digits. The archive file is named after the session.
using JobId = std::string;

class JobIdGenerator {
public:
    JobIdGenerator();                        // a new session, from the clock and random bits
    explicit JobIdGenerator(std::string session);
    JobId next();
    // Reserves `n` sequence numbers (for IDs made elsewhere, see id()); returns the first.
    std::uint64_t reserve(std::uint64_t n) { return seq_.fetch_add(n) + 1; }
    // The job ID of sequence number `seq` in `session`.
    static JobId id(const std::string& session, std::uint64_t seq);
    const std::string& session() const { return session_; }

    // The session part of a job ID; throws InvalidJob if `id` is not a job ID.
    static std::string session_of(const JobId& id);
    // The sequence part of a job ID, counted from 1; throws InvalidJob if `id` is not a job ID.
    static std::uint64_t sequence_of(const JobId& id);

private:
    std::string session_;
    std::atomic<std::uint64_t> seq_{0};
};

enum class JobState : std::uint8_t { queued, running, cancelled };

// What a job was, for the archive: set at submit, kept by the head's load balancer with the job (never sent
// to a compute server) and copied into its result. Texts are UTF-8; each may be empty.
struct JobInfo {
    std::string function; // a Python job's callable, "module.qualname"
    std::string args;     // its arguments as JSON text, when they are JSON-representable
    std::string summary;  // a short printable form of the call, e.g. "f(1, x=2)"
    std::string label;    // the user's label (Executor.options(label=...))
    std::string tags;     // the user's tags, a JSON array of strings
};
using JobInfoPtr = std::shared_ptr<const JobInfo>;

// What a submit may ask of a job besides its service and parameters.
struct JobOptions {
    double time_limit = 0; // seconds each start may run; 0 = no limit
    int retries = 0;       // runs again (at most this often) when it fails with an error
};
void check_options(const JobOptions& options); // throws InvalidJob naming the option that is wrong

// A job, shared by the balancer's job table and the server queue it sits in.
// Its state is tagged with the dispatch (attempt) it belongs to, so a server
// holding an older dispatch can neither start nor cancel the current one.
struct Job {
    JobId id;
    std::string service;
    Params params;
    std::string owner;
    double submit_time = 0; // wall seconds
    double time_limit = 0;  // seconds a start may run before it is stopped (status timeout); 0 = none
    int retries = 0;        // times a job that fails with an error is run again
    std::atomic<bool> stop_requested{false}; // kill() or the time limit: a native service may poll it
    JobInfoPtr info; // null if none was given

    // queued -> running, if `attempt` is still the current dispatch.
    bool try_start(int attempt) { return cas(pack(attempt, JobState::queued), pack(attempt, JobState::running)); }
    // queued -> cancelled for dispatch `attempt` only: that dispatch will never start (revoked or cancelled).
    bool try_revoke(int attempt) { return cas(pack(attempt, JobState::queued), pack(attempt, JobState::cancelled)); }
    // queued -> cancelled, for whichever dispatch is current.
    bool try_cancel() {
        auto cur = word_.load();
        return (cur & 0xff) == std::uint64_t(JobState::queued) && cas(cur, (cur & ~0xffull) | std::uint64_t(JobState::cancelled));
    }
    // A new dispatch: any older one can no longer start or report.
    void requeue(int attempt) { word_.store(pack(attempt, JobState::queued)); }
    int attempt() const { return int(word_.load() >> 8); }
    JobState state() const { return JobState(word_.load() & 0xff); }

private:
    static std::uint64_t pack(int attempt, JobState s) { return (std::uint64_t(attempt) << 8) | std::uint64_t(s); }
    bool cas(std::uint64_t from, std::uint64_t to) { return word_.compare_exchange_strong(from, to); }
    std::atomic<std::uint64_t> word_{pack(0, JobState::queued)};
};
using JobPtr = std::shared_ptr<Job>;

// ok/error: it ran to the end; cancelled: it never started; lost: its servers vanished max_attempts times;
// killed: stopped on request while running; timeout: stopped after its time limit.
enum class Status { ok, error, cancelled, lost, killed, timeout };
std::string_view status_name(Status s);
Status status_from_name(std::string_view name); // throws std::invalid_argument

struct Result {
    JobId job_id;
    Status status = Status::ok;
    Value value;            // the return value; for a Python error, the pickled exception
    std::string error_type; // e.g. "ValueError", "dynexec.ServerLost"
    std::string message;
    std::string traceback;
    std::string owner;
    std::string service;
    std::string server;     // the compute server that produced it
    double submit_time = 0, start_time = 0, end_time = 0; // wall seconds
    int attempts = 0;
    std::string location;   // where the archive keeps it; empty when not archived
    std::string captured_stdout, captured_stderr; // what the job printed
    JobInfoPtr info; // what the job was (set by the head, not sent over the wire); null if unknown
};

// A result for a job that never ran to completion (cancelled, lost).
Result result_without_run(const Job& job, Status status, std::string error_type, std::string message);

} // namespace dynexec
