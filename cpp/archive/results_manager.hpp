// The results manager: takes every finished result from the load balancers,
// archives it, and only then hands it on for delivery to its owner. One
// writer thread writes whatever has queued as one batch and flushes once per
// batch (group commit). A result that could not be written and flushed is
// delivered as an error (error_type "dynexec.ArchiveError", naming the job,
// the file and the OS error), never as a success; the first such failure is
// printed once on stderr, later ones are counted in last_error(). The next
// batch is tried as usual, so archiving resumes once the disk has room.
// A result whose value or error message is not UTF-8 is delivered as an error
// of its job ("dynexec.ResultDecodeError"): no reader is left to choke on it.
#pragma once

#include "archive/results_archive.hpp"
#include "registry/proxies.hpp"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace dynexec {

// Thread-safe. on_archived runs on the writer thread, or on the thread of a
// loop at the end of its turn (common/turn.hpp) when the results accepted
// during that turn were few and small and the writer's queue empty: a result
// that comes alone is archived and handed on without a hand-off to the writer.
// After close(), it runs on the thread that calls accept().
class ResultsManager final : public ResultsSink, public std::enable_shared_from_this<ResultsManager> {
public:
    using Delivery = std::function<void(std::vector<Result>&&)>;

    // With `dir`, opens the session's archive now (a bad path throws
    // ArchiveError); without, results are delivered unarchived.
    ResultsManager(std::optional<std::filesystem::path> dir, std::string session, Delivery on_archived,
                   ArchiveAccess access = ArchiveAccess::owner);
    // The same, registered so that live(session) finds it until close().
    static std::shared_ptr<ResultsManager> open(std::optional<std::filesystem::path> dir, std::string session,
                                                Delivery on_archived, ArchiveAccess access = ArchiveAccess::owner);
    // Session metadata, written to the archive file's root attributes now (see ResultsArchive::set_info).
    void set_session_info(const std::vector<std::pair<std::string, std::string>>& info);
    // The registered, open manager of `session` in this process; null if none.
    static std::shared_ptr<ResultsManager> live(const std::string& session);
    ~ResultsManager() override; // close()

    // Queues the result; never waits for I/O (during a loop's turn, it waits for the turn's end). After
    // close() it is delivered at once, unarchived.
    void accept(Result result) override;
    // Returns once every result accepted before the call has been delivered
    // (at once when called from on_archived).
    void drain();
    // Drains, stops the writer and closes the archive. Idempotent. Called from
    // on_archived, it only asks the writer to stop after the queue.
    void close();
    // A result of this session: drains, then reads the archive; nullopt if not archived.
    std::optional<Result> find(const JobId& id);

    std::uint64_t archived() const;   // results delivered so far, archived or not
    std::string last_error() const;   // the latest archive failure; empty if none
    const std::optional<std::filesystem::path>& dir() const; // absolute; nullopt without an archive
    const std::string& session() const;

private:
    struct Core; // shared with the writer thread, so that it may outlive this object
    void unregister();

    std::shared_ptr<Core> core_;
    std::thread writer_;
    bool on_writer() const { return std::this_thread::get_id() == writer_id_.load(); }
    std::atomic<std::thread::id> writer_id_;
    std::mutex join_mu_; // join() is not safe from two threads at once
};

} // namespace dynexec
