#include "archive/results_manager.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iterator>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace dynexec {
namespace fs = std::filesystem;

namespace {

// Bounds one group commit, so that the first results of a long queue are not held back by the last.
constexpr std::size_t kMaxBatch = 4096;

struct Registry {
    std::mutex mu;
    std::unordered_map<std::string, std::weak_ptr<ResultsManager>> by_session;
};

Registry& registry() {
    static auto* r = new Registry; // never destroyed: managers may close during static destruction
    return *r;
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
    std::uint64_t accepted = 0, delivered = 0;
    bool stopping = false, exited = false, printed = false;
    std::string last_error;

    void record(const std::string& message) {
        bool print;
        {
            std::lock_guard lk(mu);
            last_error = message;
            print = !std::exchange(printed, true);
        }
        if (print)
            fmt::print(stderr, "dynexec: results archive error (results are still delivered; later errors are "
                               "not printed, see last_error()): {}\n",
                       message);
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

    // Archives the batch and sets the location of each result that made it to the file.
    void archive_batch(std::vector<Result>& batch) {
        if (!archive) return;
        for (auto& r : batch) r.location.clear();
        std::unordered_set<JobId> failed;
        try {
            archive->write(batch);
        } catch (const ArchiveWriteError& e) {
            record(e.what());
            failed.insert(e.failed.begin(), e.failed.end());
        } catch (const std::exception& e) {
            record(e.what());
            return;
        }
        try {
            archive->flush(); // once per batch: the group commit
        } catch (const std::exception& e) {
            record(e.what());
            return;
        }
        for (auto& r : batch)
            if (!failed.count(r.job_id)) r.location = archive->location_of(r.job_id); // written, so a valid ID
    }

    void run() {
        for (;;) {
            std::vector<Result> batch;
            {
                std::unique_lock lk(mu);
                work_cv.wait(lk, [&] { return !queue.empty() || stopping; });
                if (queue.empty()) {
                    exited = true; // accept() delivers directly from now on
                    break;
                }
                std::size_t n = std::min(queue.size(), kMaxBatch);
                batch.assign(std::make_move_iterator(queue.begin()), std::make_move_iterator(queue.begin() + n));
                queue.erase(queue.begin(), queue.begin() + n);
            }
            std::size_t n = batch.size();
            archive_batch(batch);
            hand_on(batch); // only now: a result reaches its owner once it is durable
            {
                std::lock_guard lk(mu);
                delivered += n;
            }
            done_cv.notify_all();
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

ResultsManager::ResultsManager(std::optional<fs::path> dir, std::string session, Delivery on_archived)
    : core_(std::make_shared<Core>()) {
    core_->session = std::move(session);
    core_->deliver = std::move(on_archived);
    if (dir) {
        core_->archive = std::make_shared<ResultsArchive>(std::move(*dir), core_->session);
        core_->dir = core_->archive->dir();
    }
    // The thread holds the core, not `this`: destroying the manager from on_archived stays safe.
    writer_ = std::thread([core = core_] { core->run(); });
    writer_id_ = writer_.get_id();
}

std::shared_ptr<ResultsManager> ResultsManager::open(std::optional<fs::path> dir, std::string session,
                                                     Delivery on_archived) {
    auto m = std::make_shared<ResultsManager>(std::move(dir), std::move(session), std::move(on_archived));
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
        if (!core_->exited) {
            // The writer sleeps only on an empty queue: wake it once, not for every result.
            if (core_->queue.empty()) core_->work_cv.notify_one();
            core_->queue.push_back(std::move(result));
            return;
        }
    }
    std::vector<Result> one;
    one.push_back(std::move(result));
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
