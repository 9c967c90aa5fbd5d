#include "archive/results_manager.hpp"

#include "common/turn.hpp"
#include "common/utf8.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iterator>
#include <string_view>
#include <system_error>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace dynexec {
namespace fs = std::filesystem;

namespace {

// Bounds one group commit, so that the first results of a long queue are not held back by the last.
constexpr std::size_t kMaxBatch = 4096;
// Results that came in one turn of a loop are archived on that loop's thread when they are this few and this
// small and the writer's queue is empty (a round trip saves the hand-off to the writer); others go to the writer.
constexpr std::size_t kInlineResults = 16;
constexpr std::size_t kInlineBytes = 64 * 1024;

std::size_t value_bytes(const Value& v) {
    return std::visit(
        [](const auto& x) -> std::size_t {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>) return x.data.size();
            else if constexpr (std::is_same_v<T, std::string>) return x.size();
            else if constexpr (std::is_same_v<T, Array>) return x.nbytes;
            else return sizeof(x);
        },
        v);
}

struct Registry {
    std::mutex mu;
    std::unordered_map<std::string, std::weak_ptr<ResultsManager>> by_session;
};

Registry& registry() {
    static auto* r = new Registry; // never destroyed: managers may close during static destruction
    return *r;
}

// `s` with every byte that is not well-formed UTF-8 written as \xNN, at most `max` bytes of it.
std::string escaped(std::string_view s, std::size_t max = std::string::npos) {
    std::string out;
    bool cut = s.size() > max;
    if (cut) s = s.substr(0, max);
    while (!s.empty()) {
        std::size_t bad = invalid_utf8_at(s);
        out.append(s.substr(0, std::min(bad, s.size())));
        if (bad == std::string_view::npos) break;
        out += fmt::format("\\x{:02x}", static_cast<unsigned char>(s[bad]));
        s.remove_prefix(bad + 1);
    }
    if (cut) out += "...";
    return out;
}

std::string describe_bad_utf8(std::string_view s) {
    std::size_t at = invalid_utf8_at(s);
    return fmt::format("byte 0x{:02x} at offset {} of {}; escaped: \"{}\"", static_cast<unsigned char>(s[at]), at,
                       s.size(), escaped(s, 200));
}

// A result whose value or error text is not UTF-8 becomes an error of that job (Python could not decode it,
// and h5py readers expect UTF-8); other texts keep what they said, their bad bytes escaped.
void check_texts(Result& r) {
    auto* str = std::get_if<std::string>(&r.value);
    std::string what;
    if (str && invalid_utf8_at(*str) != std::string_view::npos) what = fmt::format("as its value ({})", describe_bad_utf8(*str));
    else if (invalid_utf8_at(r.error_type) != std::string_view::npos)
        what = fmt::format("as its error type ({})", describe_bad_utf8(r.error_type));
    else if (invalid_utf8_at(r.message) != std::string_view::npos)
        what = fmt::format("as its error message ({}{})", r.error_type.empty() ? "" : escaped(r.error_type, 200) + ": ",
                           describe_bad_utf8(r.message));
    for (auto* t : {&r.traceback, &r.owner, &r.service, &r.server, &r.captured_stdout, &r.captured_stderr})
        if (invalid_utf8_at(*t) != std::string_view::npos) *t = escaped(*t);
    if (what.empty()) return;
    r.message = fmt::format("job {}: service {} returned a string that is not UTF-8 {}", r.job_id,
                            r.service.empty() ? "(unknown)" : r.service, what);
    r.status = Status::error;
    r.error_type = "dynexec.ResultDecodeError";
    r.value = std::monostate{};
}

// What a future gets instead of a result that is not in the archive.
void mark_not_archived(Result& r, const std::string& file, const std::string& reason) {
    std::string was = r.status == Status::ok
                          ? std::string()
                          : fmt::format(" (the job ended with status {}{}{})", status_name(r.status),
                                        r.error_type.empty() ? "" : ": " + r.error_type,
                                        r.message.empty() ? "" : ": " + r.message);
    bool named = reason.find(r.job_id) != std::string::npos;
    r.message = named ? fmt::format("{} (archive '{}'){}", reason, file, was)
                      : fmt::format("the result of job {} could not be written to the results archive '{}': {}{}",
                                    r.job_id, file, reason, was);
    r.status = Status::error;
    r.error_type = "dynexec.ArchiveError";
    r.value = std::monostate{};
    r.location.clear();
}

} // namespace

struct ResultsManager::Core {
    std::optional<fs::path> dir;
    std::string session;
    Delivery deliver;
    std::shared_ptr<ResultsArchive> archive; // null without an archive and once closed

    mutable std::mutex mu;
    std::condition_variable work_cv, done_cv;
    std::deque<Result> queue;
    std::vector<Result> held; // accepted during a loop's turn, archived at its end (commit_held)
    std::uint64_t accepted = 0, delivered = 0;
    int inline_writes = 0;    // batches being archived by a loop's thread: the writer closes the archive after them
    bool stopping = false, exited = false, printed = false;
    std::uint64_t not_archived = 0; // results delivered as errors because the archive could not take them
    std::string last_error;

    // Keeps the failure; prints the first one only, in plain words (`advice` says what the user can do).
    void record(const std::string& message, const std::string& advice = {}) {
        bool print;
        {
            std::lock_guard lk(mu);
            last_error = not_archived ? fmt::format("{} results not archived so far; the latest failure: {}",
                                                    not_archived, message)
                                      : message;
            print = !std::exchange(printed, true);
        }
        if (print)
            fmt::print(stderr, "dynexec: {}{}{} Later archive failures are not printed; they are counted in "
                               "Executor.stats()[\"archive_error\"].\n",
                       message, message.ends_with('.') ? "" : ".", advice.empty() ? "" : " " + advice);
    }

    std::string file() const {
        return archive ? archive->file().string() : dir ? ResultsArchive::file_of(*dir, session).string() : "";
    }

    void hand_on(std::vector<Result>& batch) {
        if (!deliver) return;
        try {
            deliver(std::move(batch));
        } catch (const std::exception& e) {
            record(fmt::format("on_archived failed: {}", e.what()));
        } catch (...) {
            record("on_archived failed with a non-standard exception");
        }
    }

    // Archives the batch and sets the location of each result that made it to the file; the others become
    // errors (dynexec.ArchiveError), so that no future reports a success the archive does not hold.
    void archive_batch(std::vector<Result>& batch) {
        for (auto& r : batch) check_texts(r);
        if (!archive) return;
        for (auto& r : batch) r.location.clear();
        std::unordered_map<JobId, const ArchiveWriteError::Failure*> failed;
        std::string reason;
        int os_errno = 0;
        std::optional<ArchiveWriteError> error;
        try {
            archive->write(batch); // written and flushed: the group commit
        } catch (ArchiveWriteError& e) {
            error.emplace(std::move(e));
            for (const auto& f : error->failures) failed.emplace(f.job_id, &f);
            os_errno = error->os_errno;
        } catch (const std::exception& e) {
            reason = e.what(); // the archive is closed or broken: nothing of the batch is in it
        }
        std::size_t lost = 0;
        for (auto& r : batch) {
            auto it = failed.find(r.job_id);
            if (reason.empty() && it == failed.end()) {
                r.location = archive->location_of(r.job_id); // written, so a valid ID
                continue;
            }
            if (it != failed.end() && it->second->duplicate) continue; // its first result is archived, and won
            mark_not_archived(r, archive->file().string(), it != failed.end() ? it->second->reason : reason);
            ++lost;
        }
        if (!lost && !error) return;
        {
            std::lock_guard lk(mu);
            not_archived += lost;
        }
        std::string what = error ? error->what() : reason;
        if (!lost) return record(what); // only duplicates: nothing a user must do
        std::string advice = fmt::format(
            "{} result{} of this batch could not be written, so {} future{} fail{} with dynexec.ArchiveError instead "
            "of reporting success. Archiving resumes by itself with the next results once the file can be written "
            "again{}.",
            lost, lost == 1 ? "" : "s", lost == 1 ? "its" : "their", lost == 1 ? "" : "s", lost == 1 ? "s" : "",
            os_errno == ENOSPC || os_errno == EDQUOT ? " (free space on its disk, or give the Executor another archive=)"
                                                     : "");
        record(fmt::format("cannot write results to the archive '{}': {}.", file(),
                           os_errno ? fmt::format("{} (errno {})",
                                                  std::error_code(os_errno, std::generic_category()).message(), os_errno)
                                    : what),
               advice);
        if (os_errno) { // the full HDF5 account stays available to whoever reads last_error()
            std::lock_guard lk(mu);
            last_error += fmt::format(" [{}]", what);
        }
    }

    // Hands on results archived (or not) and counts them delivered.
    void hand_on_counted(std::vector<Result>& batch) {
        std::size_t n = batch.size();
        hand_on(batch); // only now: a result reaches its owner once it is durable
        {
            std::lock_guard lk(mu);
            delivered += n;
        }
        done_cv.notify_all();
    }

    // The end of a loop's turn: its results, archived here when few and small and the queue empty, else queued.
    void commit_held() {
        std::vector<Result> batch;
        bool closed;
        {
            std::lock_guard lk(mu);
            batch.swap(held);
            if (batch.empty()) return;
            closed = exited;
            std::size_t bytes = 0;
            for (const auto& r : batch) bytes += value_bytes(r.value);
            if (!closed && !(queue.empty() && batch.size() <= kInlineResults && bytes <= kInlineBytes)) {
                // The writer sleeps only on an empty queue: wake it once for the whole batch.
                if (queue.empty()) work_cv.notify_one();
                queue.insert(queue.end(), std::make_move_iterator(batch.begin()), std::make_move_iterator(batch.end()));
                return;
            }
            if (!closed) ++inline_writes;
        }
        if (closed) { // delivered unarchived, as accept() does after close()
            for (auto& r : batch) check_texts(r);
        } else {
            archive_batch(batch);
            std::lock_guard lk(mu);
            if (--inline_writes == 0 && stopping) work_cv.notify_all();
        }
        hand_on_counted(batch);
    }

    void run() {
        for (;;) {
            std::vector<Result> batch;
            {
                std::unique_lock lk(mu);
                // Results held by a loop's turn, or being archived by it, are written before the file closes.
                work_cv.wait(lk, [&] { return !queue.empty() || (stopping && inline_writes == 0 && held.empty()); });
                if (queue.empty()) {
                    exited = true; // accept() delivers directly from now on
                    break;
                }
                std::size_t n = std::min(queue.size(), kMaxBatch);
                batch.assign(std::make_move_iterator(queue.begin()), std::make_move_iterator(queue.begin() + n));
                queue.erase(queue.begin(), queue.begin() + n);
            }
            archive_batch(batch);
            hand_on_counted(batch);
        }
        std::shared_ptr<ResultsArchive> a;
        {
            std::lock_guard lk(mu);
            a = std::move(archive);
        }
        if (a) {
            try {
                a->close();
            } catch (const std::exception& e) {
                record(e.what());
            }
        }
        done_cv.notify_all();
    }
};

ResultsManager::ResultsManager(std::optional<fs::path> dir, std::string session, Delivery on_archived,
                               ArchiveAccess access)
    : core_(std::make_shared<Core>()) {
    core_->session = std::move(session);
    core_->deliver = std::move(on_archived);
    if (dir) {
        core_->archive = std::make_shared<ResultsArchive>(std::move(*dir), core_->session, access);
        core_->dir = core_->archive->dir();
    }
    // The thread holds the core, not `this`: destroying the manager from on_archived stays safe.
    writer_ = std::thread([core = core_] { core->run(); });
    writer_id_ = writer_.get_id();
}

std::shared_ptr<ResultsManager> ResultsManager::open(std::optional<fs::path> dir, std::string session,
                                                     Delivery on_archived, ArchiveAccess access) {
    auto m = std::make_shared<ResultsManager>(std::move(dir), std::move(session), std::move(on_archived), access);
    auto& reg = registry();
    std::lock_guard lk(reg.mu);
    reg.by_session[m->session()] = m;
    return m;
}

std::shared_ptr<ResultsManager> ResultsManager::live(const std::string& session) {
    auto& reg = registry();
    std::lock_guard lk(reg.mu);
    auto it = reg.by_session.find(session);
    return it == reg.by_session.end() ? nullptr : it->second.lock();
}

void ResultsManager::unregister() {
    auto& reg = registry();
    std::lock_guard lk(reg.mu);
    auto it = reg.by_session.find(core_->session);
    if (it == reg.by_session.end()) return;
    auto current = it->second.lock(); // null while this manager is being destroyed
    if (!current || current.get() == this) reg.by_session.erase(it);
}

ResultsManager::~ResultsManager() {
    if (on_writer()) {
        // The last owner let go inside on_archived: the writer finishes on its own.
        unregister();
        {
            std::lock_guard lk(core_->mu);
            core_->stopping = true;
        }
        if (writer_.joinable()) writer_.detach(); // never throw from a destructor
        return;
    }
    close();
}

void ResultsManager::accept(Result result) {
    {
        std::lock_guard lk(core_->mu);
        ++core_->accepted;
        // On a loop's thread, mid-turn: archived with the others of the turn, at its end.
        if (!core_->held.empty() || Turn::at_end(core_.get(), [core = core_] { core->commit_held(); })) {
            core_->held.push_back(std::move(result));
            return;
        }
        if (!core_->exited) {
            // The writer sleeps only on an empty queue: wake it once, not for every result.
            if (core_->queue.empty()) core_->work_cv.notify_one();
            core_->queue.push_back(std::move(result));
            return;
        }
    }
    std::vector<Result> one;
    one.push_back(std::move(result));
    check_texts(one.back());
    core_->hand_on(one);
    {
        std::lock_guard lk(core_->mu);
        ++core_->delivered;
    }
    core_->done_cv.notify_all();
}

void ResultsManager::drain() {
    if (on_writer()) return; // would wait on itself
    std::unique_lock lk(core_->mu);
    std::uint64_t target = core_->accepted;
    core_->done_cv.wait(lk, [&] { return core_->delivered >= target; });
}

void ResultsManager::close() {
    unregister();
    {
        std::lock_guard lk(core_->mu);
        core_->stopping = true;
    }
    core_->work_cv.notify_all();
    if (on_writer()) return;
    std::lock_guard lk(join_mu_);
    if (writer_.joinable()) writer_.join();
    writer_id_ = std::thread::id(); // ids are reused: a later thread must not pass for the writer
}

std::optional<Result> ResultsManager::find(const JobId& id) {
    drain();
    std::shared_ptr<ResultsArchive> a;
    {
        std::lock_guard lk(core_->mu);
        a = core_->archive;
    }
    if (a) {
        try {
            return a->read(id);
        } catch (const ArchiveError&) {
            // Closed under us: read the file the ordinary way below.
        }
    }
    if (core_->dir) return ResultsArchive::read_from(*core_->dir, id);
    return std::nullopt;
}

void ResultsManager::set_session_info(const std::vector<std::pair<std::string, std::string>>& info) {
    std::shared_ptr<ResultsArchive> a;
    {
        std::lock_guard lk(core_->mu);
        a = core_->archive;
    }
    if (a) a->set_info(info);
}

std::uint64_t ResultsManager::archived() const {
    std::lock_guard lk(core_->mu);
    return core_->delivered;
}

std::string ResultsManager::last_error() const {
    std::lock_guard lk(core_->mu);
    return core_->last_error;
}

const std::optional<fs::path>& ResultsManager::dir() const { return core_->dir; }
const std::string& ResultsManager::session() const { return core_->session; }

} // namespace dynexec
