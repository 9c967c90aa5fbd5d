// The head's proxy for a compute server in another process: run() sends the
// job; results come back through on_result(). Thread-safe.
#pragma once

#include "remote/outbox.hpp"

#include <unordered_map>

namespace dynexec::remote {

class RemoteServerProxy final : public ComputeServerProxy {
public:
    RemoteServerProxy(Outbox& out, std::string routing_id, unsigned slots)
        : out_(out), routing_(std::move(routing_id)), slots_(slots) {}

    void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) override {
        auto frames = wire::encode(wire::JobMsg{job, attempt});
        {
            std::lock_guard lk(mu_);
            pending_[job->id] = {attempt, std::move(sink)};
        }
        out_.push(routing_, std::move(frames));
    }
    void revoke(const JobId& id, int attempt) override {
        {
            std::lock_guard lk(mu_);
            auto it = pending_.find(id);
            if (it == pending_.end() || it->second.first != attempt) return;
            pending_.erase(it);
        }
        out_.push(routing_, wire::encode(wire::Type::revoke, wire::Request{std::uint64_t(attempt), id}));
    }
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
            if (it == pending_.end() || it->second.first != m.attempt) return;
            sink = std::move(it->second.second);
            pending_.erase(it);
            // Statistics as of this result: fresher than the last renewal, which the balancer also reads.
            ++last_.jobs_done;
            last_.busy_time += std::max(0.0, m.result.end_time - m.result.start_time);
            last_.last_completion = std::max(last_.last_completion, m.result.end_time);
        }
        sink->complete(std::move(m.result), m.attempt);
    }
    const std::string& routing_id() const { return routing_; }

private:
    Outbox& out_;
    std::string routing_;
    unsigned slots_;
    mutable std::mutex mu_;
    ServerStats last_;
    std::unordered_map<JobId, std::pair<int, std::shared_ptr<CompletionSink>>> pending_;
};

} // namespace dynexec::remote
