// A job's output: what it writes to stdout and stderr, kept per job for its
// Result and, when the caller asked for live echo, handed on in chunks while
// it runs. Python jobs write through dynexec._runner's per-thread streams
// (JobOutput::current()); a single-slot server process also redirects file
// descriptors 1 and 2 around each job (FdRedirect), so printf, std::cout and
// C extensions are captured too.
#pragma once

#include "common/clock.hpp"
#include "common/job.hpp"

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace dynexec {

// stream: 1 = stdout, 2 = stderr; final: the job's last chunk (data empty), sent once it has ended.
struct OutputChunk {
    JobId job_id;
    int stream = 1;
    std::string data; // raw bytes, as written (the receiver decodes them)
    bool final = false;
};

// Live output received and not yet polled, at most (beyond it, chunks are dropped: nobody reads them).
constexpr std::size_t kLiveOutputBacklog = 16 << 20;

// Where live output goes while a job runs; called on the job's threads. Must be cheap and not block.
using OutputSink = std::function<void(const JobId&, int stream, std::string_view data, bool final)>;

// `s` as valid UTF-8: each invalid or truncated sequence becomes U+FFFD.
std::string valid_utf8(std::string_view s);

// What one job wrote, per stream. Thread-safe (the job's threads and the fd drainer write).
class JobOutput {
public:
    static constexpr std::size_t kDefaultLimit = 1 << 20; // bytes kept per stream

    JobOutput(JobId id, std::size_t limit, OutputSink live = {});
    void write(int stream, std::string_view data);
    // Ends the job's output: its texts go into the Result (valid UTF-8; past the limit, the first
    // `limit` bytes and a note of how many were dropped), and a live sink hears the final chunk.
    void finish(Result& r);

    // The output of the job the calling thread runs, if its server captures output; else nullptr.
    static JobOutput* current();
    struct Scope { // makes `out` current on this thread for its lifetime
        explicit Scope(JobOutput* out);
        ~Scope();
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;
        JobOutput* previous;
    };

private:
    struct Stream {
        std::string kept;
        std::size_t dropped = 0;
    };
    JobId id_;
    std::size_t limit_;
    OutputSink live_;
    std::mutex mu_;
    Stream streams_[2];
    bool finished_ = false;
};

// Process-wide redirection of file descriptors 1 and 2 into pipes that one thread drains into the
// current job's JobOutput. For a server process that runs one job at a time: every thread's writes
// to fd 1/2 while a job runs are that job's. Not for the caller's own process.
class FdRedirect {
public:
    FdRedirect(); // throws std::system_error if pipes or the thread cannot be made
    ~FdRedirect();
    FdRedirect(const FdRedirect&) = delete;
    FdRedirect& operator=(const FdRedirect&) = delete;

    void begin(JobOutput& out); // flushes stdio, then points fd 1 and 2 at the pipes
    void end();                 // flushes stdio, restores fd 1 and 2, drains what the job wrote

private:
    void drain(); // the thread
    void read_available(int i); // under mu_
    int saved_[2] = {-1, -1};
    int pipe_[2][2] = {{-1, -1}, {-1, -1}}; // [stream][read, write]
    int wake_[2] = {-1, -1};                // stops the drainer
    std::mutex mu_;
    JobOutput* target_ = nullptr;
    std::thread thread_;
};

struct CaptureOptions {
    bool enabled = false; // keep each job's output (a server process; never the caller's own)
    bool fds = false;     // also redirect fd 1/2 around each job: single-slot server processes only
    std::size_t limit = JobOutput::kDefaultLimit;
    OutputSink live;      // live chunks (the server host's batcher, when echo is on)
};

// A compute server's capture: one Job per job it runs.
class OutputCapture {
public:
    explicit OutputCapture(CaptureOptions options);

    // Captures on the calling thread (and fd 1/2, if so configured) from construction until finish().
    class Job {
    public:
        Job(OutputCapture* capture, const JobId& id); // capture == nullptr: captures nothing
        ~Job();
        void finish(Result& r); // stops capturing; the texts go into `r`
    private:
        OutputCapture* capture_;
        std::unique_ptr<JobOutput> out_;
        std::optional<JobOutput::Scope> scope_;
    };

private:
    CaptureOptions options_;
    std::unique_ptr<FdRedirect> fds_;
};

// Batches live chunks for the wire: one message per `max_bytes` or per `max_delay`, whichever comes
// first, so a chatty job does not flood the head. Pure state; the caller brings the time. Not thread-safe.
class OutputBatcher {
public:
    explicit OutputBatcher(std::size_t max_bytes = 64 * 1024, Duration max_delay = std::chrono::milliseconds(100))
        : max_bytes_(max_bytes), max_delay_(max_delay) {}
    // Adds a chunk (appended to the last one of the same job and stream); true if a batch is due.
    bool add(const JobId& id, int stream, std::string_view data, bool final, TimePoint now);
    bool due(TimePoint now) const;
    bool empty() const { return chunks_.empty(); }
    std::vector<OutputChunk> take();

private:
    std::size_t max_bytes_;
    Duration max_delay_;
    std::vector<OutputChunk> chunks_;
    std::size_t bytes_ = 0;
    TimePoint first_{};
    bool final_ = false; // a job ended: send at once, ahead of its result
};

} // namespace dynexec
