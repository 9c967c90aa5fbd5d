#include "common/job.hpp"

#include "common/errors.hpp"

#include <fmt/format.h>

#include <array>
#include <chrono>
#include <random>

namespace dynexec {
namespace {

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
constexpr std::size_t kSessionChars = 16;
constexpr std::size_t kSeqDigits = 10;

void append_base32(std::string& out, std::uint64_t v, int chars) {
    for (int i = chars - 1; i >= 0; --i) out.push_back(kCrockford[(v >> (5 * i)) & 31]);
}

std::string new_session() {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
    std::random_device rd;
    std::uint64_t rnd = (std::uint64_t(rd()) << 32) ^ rd();
    std::string s;
    append_base32(s, static_cast<std::uint64_t>(ms), 10);
    append_base32(s, rnd, 6);
    return s;
}

// Job IDs are checked at every hop (the archive checks each row's): a table, not a search per character.
constexpr auto kIsCrockford = [] {
    std::array<bool, 256> t{};
    for (char c : std::string_view(kCrockford)) t[static_cast<unsigned char>(c)] = true;
    return t;
}();

bool is_session(std::string_view s) {
    if (s.size() != kSessionChars) return false;
    for (char c : s)
        if (!kIsCrockford[static_cast<unsigned char>(c)]) return false;
    return true;
}

} // namespace

JobIdGenerator::JobIdGenerator() : session_(new_session()) {}
JobIdGenerator::JobIdGenerator(std::string session) : session_(std::move(session)) {
    if (!is_session(session_)) throw InvalidJob(fmt::format("'{}' is not a dynexec session ID", session_));
}

JobId JobIdGenerator::next() { return id(session_, ++seq_); }
JobId JobIdGenerator::id(const std::string& session, std::uint64_t seq) {
    return fmt::format("{}-{:0{}}", session, seq, kSeqDigits);
}

namespace {

// Throws InvalidJob unless `id` is "<session>-<sequence>".
void check_job_id(const JobId& id) {
    auto dash = id.find('-');
    bool ok = dash == kSessionChars && id.size() == kSessionChars + 1 + kSeqDigits &&
              is_session(std::string_view(id).substr(0, dash)) &&
              id.find_first_not_of("0123456789", dash + 1) == std::string::npos;
    if (!ok)
        throw InvalidJob(fmt::format("'{}' is not a dynexec job ID (expected {} base-32 characters, '-', {} digits)",
                                     id, kSessionChars, kSeqDigits));
}

} // namespace

std::string JobIdGenerator::session_of(const JobId& id) {
    check_job_id(id);
    return id.substr(0, kSessionChars);
}

std::uint64_t JobIdGenerator::sequence_of(const JobId& id) {
    check_job_id(id);
    std::uint64_t seq = 0;
    for (char c : std::string_view(id).substr(kSessionChars + 1)) seq = seq * 10 + std::uint64_t(c - '0');
    if (seq == 0) throw InvalidJob(fmt::format("'{}' is not a dynexec job ID (sequence numbers start at 1)", id));
    return seq;
}

void check_options(const JobOptions& o) {
    if (!(o.time_limit >= 0)) throw InvalidJob(fmt::format("time_limit must be positive or 0 (none), got {}", o.time_limit));
    if (o.retries < 0) throw InvalidJob(fmt::format("retries must be 0 or more, got {}", o.retries));
}

std::string_view status_name(Status s) {
    switch (s) {
    case Status::ok: return "ok";
    case Status::error: return "error";
    case Status::cancelled: return "cancelled";
    case Status::lost: return "lost";
    case Status::killed: return "killed";
    case Status::timeout: return "timeout";
    }
    return "?";
}

Status status_from_name(std::string_view name) {
    for (Status s : {Status::ok, Status::error, Status::cancelled, Status::lost, Status::killed, Status::timeout})
        if (status_name(s) == name) return s;
    throw std::invalid_argument(fmt::format("unknown job status '{}'", name));
}

Result result_without_run(const Job& job, Status status, std::string error_type, std::string message) {
    Result r;
    r.job_id = job.id;
    r.status = status;
    r.error_type = std::move(error_type);
    r.message = std::move(message);
    r.owner = job.owner;
    r.service = job.service;
    r.submit_time = job.submit_time;
    r.attempts = job.attempt();
    r.info = job.info;
    return r;
}

} // namespace dynexec
