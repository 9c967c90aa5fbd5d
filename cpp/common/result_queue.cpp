#include "common/result_queue.hpp"

namespace dynexec {

std::size_t ResultQueue::push(std::vector<Result>&& batch) {
    std::size_t n = batch.size();
    {
        std::lock_guard lk(mu_);
        for (auto& r : batch) {
            if (!expected_.empty()) {
                auto it = expected_.find(r.job_id);
                if (it != expected_.end() && !it->second) {
                    it->second = std::move(r);
                    continue;
                }
            }
            queue_.push_back(std::move(r));
        }
    }
    // Pollers sleep only on an empty queue and callers on their own result: one wake for the batch.
    cv_.notify_all();
    return n;
}

std::vector<Result> ResultQueue::poll(std::size_t max, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    polled_.clear(); // the last batch is settled: the poller comes back only then
    cv_.wait_for(lk, timeout, [&] { return !queue_.empty(); });
    std::vector<Result> out;
    while (!queue_.empty() && out.size() < max) {
        polled_.insert(queue_.front().job_id);
        out.push_back(std::move(queue_.front()));
        queue_.pop_front();
    }
    return out;
}

bool ResultQueue::expect(const JobId& id) {
    std::lock_guard lk(mu_);
    // A long queue is the poller's to drain (and not worth a scan per caller): its future is settled from there.
    if (polled_.count(id) || expected_.count(id) || queue_.size() > kScanned) return false;
    auto& slot = expected_[id];
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (it->job_id == id) { // came already: it is the caller's now
            slot = std::move(*it);
            queue_.erase(it);
            break;
        }
    return true;
}

std::optional<Result> ResultQueue::await(const JobId& id, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    auto it = expected_.find(id);
    if (it == expected_.end()) return std::nullopt;
    auto& slot = it->second; // a reference stays valid while other callers' entries come and go (not an iterator)
    if (!cv_.wait_for(lk, timeout, [&] { return slot.has_value(); })) return std::nullopt;
    auto r = std::move(slot);
    expected_.erase(id);
    return r;
}

void ResultQueue::forget(const JobId& id) {
    std::lock_guard lk(mu_);
    auto it = expected_.find(id);
    if (it == expected_.end()) return;
    if (it->second) queue_.push_back(std::move(*it->second));
    expected_.erase(it);
    cv_.notify_all();
}

} // namespace dynexec
