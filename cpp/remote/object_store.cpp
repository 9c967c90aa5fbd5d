#include "remote/object_store.hpp"

namespace dynexec::remote {

namespace {
std::size_t size_of(const Value& v) {
    if (auto* a = std::get_if<Array>(&v)) return a->nbytes;
    if (auto* b = std::get_if<Bytes>(&v)) return b->data.size();
    if (auto* p = std::get_if<Pickled>(&v)) return p->data.size();
    return 0;
}
} // namespace

void ObjectStore::hold(const std::string& holder, const std::string& key, const Value& data) {
    MutexLock lk(mu_);
    auto& e = objects_[key];
    if (e.holders.empty()) e.data = data; // the first copy stays: the key is its content's hash
    e.holders.insert(holder);
    by_holder_[holder].insert(key);
}

std::optional<Value> ObjectStore::find(const std::string& holder, const std::string& key) const {
    MutexLock lk(mu_);
    auto it = objects_.find(key);
    if (it == objects_.end() || !it->second.holders.count(holder)) return std::nullopt;
    return it->second.data;
}

bool ObjectStore::held(const std::string& key) const {
    MutexLock lk(mu_);
    return objects_.count(key) > 0;
}

std::vector<std::string> ObjectStore::release(const std::string& holder, const std::vector<std::string>& keys) {
    MutexLock lk(mu_);
    std::vector<std::string> dropped;
    auto mine = by_holder_.find(holder);
    for (auto& key : keys) {
        auto it = objects_.find(key);
        if (it == objects_.end() || !it->second.holders.erase(holder)) continue;
        if (mine != by_holder_.end()) mine->second.erase(key);
        if (it->second.holders.empty()) {
            objects_.erase(it);
            dropped.push_back(key);
        }
    }
    if (mine != by_holder_.end() && mine->second.empty()) by_holder_.erase(mine);
    return dropped;
}

std::vector<std::string> ObjectStore::release_all(const std::string& holder) {
    std::vector<std::string> keys;
    {
        MutexLock lk(mu_);
        auto mine = by_holder_.find(holder);
        if (mine == by_holder_.end()) return {};
        keys.assign(mine->second.begin(), mine->second.end());
    }
    return release(holder, keys);
}

std::size_t ObjectStore::size() const {
    MutexLock lk(mu_);
    return objects_.size();
}

std::size_t ObjectStore::bytes() const {
    MutexLock lk(mu_);
    std::size_t n = 0;
    for (auto& [k, e] : objects_) n += size_of(e.data);
    return n;
}

} // namespace dynexec::remote
