// Leases as pure state: granted for a duration, renewed, cancelled, expired by a
// clock reading passed in. Not thread-safe: its owner locks.
#pragma once

#include "common/clock.hpp"

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace dynexec {

class LeaseTable {
public:
    // Grants (or replaces) the lease of `id`; returns its expiry.
    TimePoint grant(const std::string& id, Duration duration, TimePoint now);
    // Extends a live lease by its duration from `now`; false if it is unknown or already expired.
    std::optional<TimePoint> renew(const std::string& id, TimePoint now);
    bool cancel(const std::string& id);
    bool live(const std::string& id, TimePoint now) const;
    std::optional<TimePoint> expiry(const std::string& id) const;
    // Removes and returns every lease whose expiry is at or before `now`, oldest first.
    std::vector<std::string> take_expired(TimePoint now);
    std::optional<TimePoint> next_expiry() const;
    // After a stall of the owner (no renewal could be seen from `since` to `now`): every lease still live
    // at `since` runs at least its full duration from `now`. Returns how many were extended.
    std::size_t extend_stalled(TimePoint since, TimePoint now);
    std::size_t size() const { return leases_.size(); }

private:
    struct Lease {
        TimePoint expiry;
        Duration duration;
    };
    std::map<std::string, Lease> leases_;
};

} // namespace dynexec
