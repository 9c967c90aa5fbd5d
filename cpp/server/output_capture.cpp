#include "server/output_capture.hpp"

#include "common/utf8.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <system_error>

namespace dynexec {
namespace {

thread_local JobOutput* current_output = nullptr;

[[noreturn]] void fail(const char* what) { throw std::system_error(errno, std::generic_category(), what); }

} // namespace

std::string valid_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        if (auto n = utf8_sequence_at(s, i)) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out.append("\xEF\xBF\xBD"); // U+FFFD
            ++i;
        }
    }
    return out;
}

// -- JobOutput ------------------------------------------------------------------------------------

JobOutput::JobOutput(JobId id, std::size_t limit, OutputSink live)
    : id_(std::move(id)), limit_(limit), live_(std::move(live)) {}

void JobOutput::write(int stream, std::string_view data) {
    if (data.empty() || (stream != 1 && stream != 2)) return;
    std::lock_guard lk(mu_);
    if (finished_) return; // a thread the job left behind: its output is no longer this job's
    auto& s = streams_[stream - 1];
    auto room = limit_ - std::min(limit_, s.kept.size());
    s.kept.append(data.substr(0, room));
    s.dropped += data.size() - std::min(room, data.size());
    if (live_) live_(id_, stream, data, false); // under mu_: chunks keep their order, and none follows the final one
}

void JobOutput::finish(Result& r) {
    std::lock_guard lk(mu_);
    if (finished_) return;
    finished_ = true;
    auto text = [&](Stream& s, const char* name) {
        auto out = valid_utf8(s.kept);
        if (s.dropped)
            out += fmt::format("\n[dynexec: {} more bytes of {} dropped; a job keeps at most {} bytes per stream]\n",
                               s.dropped, name, limit_);
        return out;
    };
    r.captured_stdout = text(streams_[0], "stdout");
    r.captured_stderr = text(streams_[1], "stderr");
    if (live_) live_(id_, 0, {}, true);
}

JobOutput* JobOutput::current() { return current_output; }

JobOutput::Scope::Scope(JobOutput* out) : previous(std::exchange(current_output, out)) {}
JobOutput::Scope::~Scope() { current_output = previous; }

// -- FdRedirect -----------------------------------------------------------------------------------

FdRedirect::FdRedirect() {
    for (int i = 0; i < 2; ++i) {
        if (pipe2(pipe_[i], O_CLOEXEC) != 0) fail("cannot make a pipe to capture a job's output");
        fcntl(pipe_[i][0], F_SETFL, O_NONBLOCK); // drained until empty, never waited on
    }
    if (pipe2(wake_, O_CLOEXEC) != 0) fail("cannot make a pipe to capture a job's output");
    // The process's own fd 1 and 2, put back after each job (duplicated once, not per job).
    for (int i = 0; i < 2; ++i) saved_[i] = fcntl(i + 1, F_DUPFD_CLOEXEC, 3);
    thread_ = std::thread([this] { drain(); });
}

FdRedirect::~FdRedirect() {
    end();
    (void)!::write(wake_[1], "x", 1);
    thread_.join();
    for (auto& p : pipe_)
        for (int fd : p) close(fd);
    for (int fd : wake_) close(fd);
    for (int fd : saved_)
        if (fd >= 0) close(fd);
}

void FdRedirect::begin(JobOutput& out) {
    std::fflush(nullptr); // what was printed before the job is not the job's
    std::lock_guard lk(mu_);
    if (target_) return;
    for (int i = 0; i < 2; ++i)
        if (saved_[i] >= 0) (void)dup2(pipe_[i][1], i + 1); // should it fail, the job runs uncaptured
    target_ = &out;
}

void FdRedirect::end() {
    std::fflush(nullptr); // the job's buffered printf output goes into the pipe first
    std::lock_guard lk(mu_);
    if (!target_) return;
    for (int i = 0; i < 2; ++i)
        if (saved_[i] >= 0) (void)dup2(saved_[i], i + 1);
    // Every write that returned before the restore is in the pipe now: take it all.
    for (int i = 0; i < 2; ++i) read_available(i);
    target_ = nullptr;
}

void FdRedirect::read_available(int i) {
    char buf[16384];
    for (;;) {
        auto n = ::read(pipe_[i][0], buf, sizeof buf);
        if (n > 0) {
            if (target_) target_->write(i + 1, std::string_view(buf, std::size_t(n)));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return; // empty (EAGAIN)
    }
}

void FdRedirect::drain() {
    pollfd fds[3] = {{pipe_[0][0], POLLIN, 0}, {pipe_[1][0], POLLIN, 0}, {wake_[0], POLLIN, 0}};
    for (;;) {
        if (poll(fds, 3, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[2].revents) return;
        // Under mu_, so that end() sees every byte this thread has read already delivered.
        std::lock_guard lk(mu_);
        for (int i = 0; i < 2; ++i)
            if (fds[i].revents) read_available(i);
    }
}

// -- OutputCapture --------------------------------------------------------------------------------

OutputCapture::OutputCapture(CaptureOptions options) : options_(std::move(options)) {
    if (options_.fds) fds_ = std::make_unique<FdRedirect>();
}

OutputCapture::Job::Job(OutputCapture* capture, const JobId& id) : capture_(capture) {
    if (!capture_ || !capture_->options_.enabled) return;
    out_ = std::make_unique<JobOutput>(id, capture_->options_.limit, capture_->options_.live);
    scope_.emplace(out_.get());
    if (capture_->fds_) capture_->fds_->begin(*out_);
}

OutputCapture::Job::~Job() {
    if (out_ && capture_->fds_) capture_->fds_->end();
}

void OutputCapture::Job::finish(Result& r) {
    if (!out_) return;
    if (capture_->fds_) capture_->fds_->end();
    scope_.reset();
    out_->finish(r);
}

// -- OutputBatcher --------------------------------------------------------------------------------

bool OutputBatcher::add(const JobId& id, int stream, std::string_view data, bool final, TimePoint now) {
    if (chunks_.empty()) first_ = now;
    auto* last = chunks_.empty() ? nullptr : &chunks_.back();
    if (!final && last && !last->final && last->job_id == id && last->stream == stream)
        last->data.append(data);
    else
        chunks_.push_back({id, stream, std::string(data), final});
    bytes_ += data.size();
    final_ = final_ || final;
    return due(now);
}

bool OutputBatcher::due(TimePoint now) const {
    return !chunks_.empty() && (final_ || bytes_ >= max_bytes_ || now - first_ >= max_delay_);
}

std::vector<OutputChunk> OutputBatcher::take() {
    bytes_ = 0;
    final_ = false;
    return std::exchange(chunks_, {});
}

} // namespace dynexec
