// One turn of an event loop on this thread (remote/loop.hpp makes one per batch of messages it reads):
// work that handling a message defers with Turn::at_end runs once every message of the batch is handled,
// so what is worth doing once per batch (archiving the results that came: one write and one flush) is
// not done once per message, nor handed to another thread when it is small.
#pragma once

#include <exception>
#include <functional>
#include <iostream>
#include <utility>
#include <vector>

namespace dynexec {

class Turn {
public:
    Turn() : outer_(std::exchange(current_, this)) {}
    // Runs what was deferred, in order, outside the turn (what they accept is no longer deferred).
    ~Turn() {
        current_ = outer_;
        for (auto& [key, fn] : deferred_) try {
                fn();
            } catch (const std::exception& e) {
                std::cerr << "dynexec: work deferred to the end of a loop's turn failed: " << e.what() << std::endl;
            }
    }
    Turn(const Turn&) = delete;
    Turn& operator=(const Turn&) = delete;

    // Defers fn to the end of this thread's turn, once per key (a later call with the same key is a no-op
    // that returns true). Outside a turn it keeps nothing and returns false: the caller does the work now.
    static bool at_end(const void* key, std::function<void()> fn) {
        if (!current_) return false;
        for (auto& d : current_->deferred_)
            if (d.first == key) return true;
        current_->deferred_.emplace_back(key, std::move(fn));
        return true;
    }

private:
    static inline thread_local Turn* current_ = nullptr;
    Turn* outer_;
    std::vector<std::pair<const void*, std::function<void()>>> deferred_;
};

} // namespace dynexec
