#include "registry/lease_table.hpp"

#include <algorithm>
#include <stdexcept>

namespace dynexec {

TimePoint LeaseTable::grant(const std::string& id, Duration duration, TimePoint now) {
    if (duration <= Duration::zero()) throw std::invalid_argument("a lease needs a positive duration");
    leases_[id] = {now + duration, duration};
    return now + duration;
}

std::optional<TimePoint> LeaseTable::renew(const std::string& id, TimePoint now) {
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.expiry <= now) return std::nullopt;
    it->second.expiry = now + it->second.duration;
    return it->second.expiry;
}

bool LeaseTable::cancel(const std::string& id) { return leases_.erase(id) > 0; }

bool LeaseTable::live(const std::string& id, TimePoint now) const {
    auto it = leases_.find(id);
    return it != leases_.end() && it->second.expiry > now;
}

std::optional<TimePoint> LeaseTable::expiry(const std::string& id) const {
    auto it = leases_.find(id);
    if (it == leases_.end()) return std::nullopt;
    return it->second.expiry;
}

std::vector<std::string> LeaseTable::take_expired(TimePoint now) {
    std::vector<std::pair<TimePoint, std::string>> due;
    for (auto& [id, l] : leases_)
        if (l.expiry <= now) due.emplace_back(l.expiry, id);
    std::sort(due.begin(), due.end());
    std::vector<std::string> out;
    for (auto& [t, id] : due) {
        leases_.erase(id);
        out.push_back(id);
    }
    return out;
}

std::optional<TimePoint> LeaseTable::next_expiry() const {
    std::optional<TimePoint> next;
    for (auto& [id, l] : leases_)
        if (!next || l.expiry < *next) next = l.expiry;
    return next;
}

std::size_t LeaseTable::extend_stalled(TimePoint since, TimePoint now) {
    std::size_t n = 0;
    for (auto& [id, l] : leases_)
        if (l.expiry > since && l.expiry < now + l.duration) {
            l.expiry = now + l.duration;
            ++n;
        }
    return n;
}

} // namespace dynexec
