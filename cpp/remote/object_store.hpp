// ObjectStore: the head's part of moving large objects once (see common/objects.hpp): which submitters
// (clients, or this process: holder "") hold which object. An object is kept while some holder holds it;
// what a pending job needs, its own parameters keep alive.
#pragma once

#include "common/objects.hpp"
#include "common/thread_annotations.hpp"

#include <dynexec/value.hpp>

#include <atomic>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace dynexec::remote {

class ObjectStore {
public:
    // `holder` sent object `key` with its data: kept until every holder has released it.
    void hold(const std::string& holder, const std::string& key, const Value& data);
    // The data of `key` if `holder` holds it (the holder sent it as None: "you have it from me").
    std::optional<Value> find(const std::string& holder, const std::string& key) const;
    bool held(const std::string& key) const;
    // Ends `holder`'s hold of `keys`; returns those no holder holds any more (now dropped).
    std::vector<std::string> release(const std::string& holder, const std::vector<std::string>& keys);
    std::vector<std::string> release_all(const std::string& holder); // it is gone
    std::size_t size() const;
    std::size_t bytes() const;
    // Object data sent to compute servers (counted by their proxies).
    void count_sent() const { sent_.fetch_add(1, std::memory_order_relaxed); }
    std::uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }

private:
    struct Entry {
        Value data;
        std::set<std::string> holders;
    };
    mutable std::atomic<std::uint64_t> sent_{0};
    mutable Mutex mu_;
    std::map<std::string, Entry, std::less<>> objects_ GUARDED_BY(mu_);
    std::map<std::string, std::set<std::string>> by_holder_ GUARDED_BY(mu_);
};

} // namespace dynexec::remote
