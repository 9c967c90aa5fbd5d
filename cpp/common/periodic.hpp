// A thread that calls a function every `period` until stopped; stop() returns promptly.
#pragma once

#include "common/clock.hpp"

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace dynexec {

class PeriodicThread {
public:
    PeriodicThread(Duration period, std::function<void()> fn) : period_(period), fn_(std::move(fn)) {
        thread_ = std::thread([this] { loop(); });
    }
    ~PeriodicThread() { stop(); }
    PeriodicThread(const PeriodicThread&) = delete;
    PeriodicThread& operator=(const PeriodicThread&) = delete;

    void stop() {
        {
            std::lock_guard lk(mu_);
            stopping_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
    }

private:
    void loop() {
        std::unique_lock lk(mu_);
        while (!cv_.wait_for(lk, period_, [this] { return stopping_; })) {
            lk.unlock();
            fn_();
            lk.lock();
        }
    }

    Duration period_;
    std::function<void()> fn_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    std::thread thread_;
};

} // namespace dynexec
