// The head's proxy for a compute server in another process: run() sends the
// job; results come back through on_result(). Thread-safe.
#pragma once

#include "remote/object_store.hpp"
#include "remote/outbox.hpp"

#include <set>
#include <unordered_map>

namespace dynexec::remote {

class RemoteServerProxy final : public ComputeServerProxy {
public:
    RemoteServerProxy(Outbox& out, std::string routing_id, unsigned slots, const ObjectStore& objects)
        : out_(out), routing_(std::move(routing_id)), slots_(slots), objects_(objects) {}

    // An object goes to the server once: it keeps those the store holds (until forget()); one the store no
    // longer holds goes with the job and is forgotten right after it.
    void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) override {
        auto keys = object_keys(job->params);
        if (keys.empty()) { // encoded without the lock, which results and stats take
            auto frames = wire::encode(wire::JobMsg{job, attempt, {}});
            {
                std::lock_guard lk(mu_);
                pending_[job->id] = {job, attempt, std::move(sink)};
            }
            out_.push(routing_, std::move(frames));
            return;
        }
        wire::JobMsg msg{job, attempt, {}};
        std::vector<std::string> once;
        std::lock_guard lk(mu_); // held while sending: forget() cannot come between the check and the job
        for (auto key : keys) {
            std::string k(key);
            if (has_.count(k)) {
                msg.cached.push_back(k);
                continue;
            }
            objects_.count_sent();
            if (objects_.held(k)) has_.insert(k);
            else once.push_back(k);
        }
        pending_[job->id] = {job, attempt, std::move(sink)};
        out_.push(routing_, wire::encode(msg));
        if (!once.empty()) out_.push(routing_, wire::encode(wire::Forget{std::move(once)}));
    }
    // The store dropped these objects: the server drops those it has.
    void forget(const std::vector<std::string>& keys) {
        std::vector<std::string> had;
        std::lock_guard lk(mu_);
        for (auto& k : keys)
            if (has_.erase(k)) had.push_back(k);
        if (!had.empty()) out_.push(routing_, wire::encode(wire::Forget{std::move(had)}));
    }
    // The server answers with revoked: only it knows whether it has started the job.
    std::optional<bool> revoke(const JobPtr& job, int attempt) override {
        out_.push(routing_, wire::encode(wire::Revoke{job->id, attempt}));
        return std::nullopt;
    }
    void stop(const JobId& id, int attempt, Status why) override {
        out_.push(routing_, wire::encode(wire::StopJob{id, attempt, why}));
    }
    bool shares_jobs() const override { return false; }
    ServerStats stats() const override {
        std::lock_guard lk(mu_);
        auto s = last_;
        s.in_flight = std::uint32_t(pending_.size());
        return s;
    }
    unsigned slots() const override { return slots_; }

    void on_result(wire::ResultMsg m) {
        std::shared_ptr<CompletionSink> sink;
        {
            std::lock_guard lk(mu_);
            auto it = pending_.find(m.result.job_id);
            // The same job may be here twice (handed to another balancer): only the current dispatch counts.
            if (it == pending_.end() || it->second.attempt != m.attempt) return;
            sink = std::move(it->second.sink);
            pending_.erase(it);
            // Statistics as of this result: fresher than the last renewal, which the balancer also reads.
            ++last_.jobs_done;
            last_.busy_time += std::max(0.0, m.result.end_time - m.result.start_time);
            last_.last_completion = std::max(last_.last_completion, m.result.end_time);
        }
        sink->complete(std::move(m.result), m.attempt);
    }
    // Our copy of the job says it runs, as the server's does (the balancer reads it).
    void on_started(const wire::Started& m) {
        std::lock_guard lk(mu_);
        if (auto it = pending_.find(m.job_id); it != pending_.end() && it->second.attempt == m.attempt)
            it->second.job->try_start(m.attempt);
    }
    void on_revoked(const wire::Revoked& m) {
        std::shared_ptr<CompletionSink> sink;
        {
            std::lock_guard lk(mu_);
            auto it = pending_.find(m.job_id);
            if (it == pending_.end() || it->second.attempt != m.attempt) return;
            sink = it->second.sink;
            if (m.ok) pending_.erase(it); // that dispatch will send nothing more
        }
        sink->revoked(m.job_id, m.attempt, m.ok);
    }
    const std::string& routing_id() const { return routing_; }

private:
    Outbox& out_;
    std::string routing_;
    unsigned slots_;
    const ObjectStore& objects_;
    mutable std::mutex mu_;
    std::set<std::string> has_; // objects the server keeps
    ServerStats last_;
    struct Pending {
        JobPtr job; // the balancer's copy
        int attempt = 0;
        std::shared_ptr<CompletionSink> sink;
    };
    std::unordered_map<JobId, Pending> pending_;
};

} // namespace dynexec::remote
