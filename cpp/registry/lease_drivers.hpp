// The threads that drive leases in real time: the reaper expires them, a
// renewer keeps one registration alive. The lease logic itself is in
// LookupRegistry/LeaseTable, tested with a FakeClock.
#pragma once

#include "common/periodic.hpp"
#include "registry/lookup_registry.hpp"

#include <atomic>

namespace dynexec {

class LeaseReaper {
public:
    // A call far later than `period` means the whole process was stopped, not that every server died: the
    // registry then extends the leases it could not have seen renewed (see LookupRegistry::detect_stalls).
    LeaseReaper(LookupRegistry& registry, Duration period)
        : thread_(period, [&registry] { registry.expire_due(); }) {
        registry.detect_stalls(stall_gap(period));
    }
    void stop() { thread_.stop(); }

    // Far beyond scheduling delays on a busy machine, and well below a lease's renewal margin.
    static Duration stall_gap(Duration period) {
        return std::max(Duration(period * 50), Duration(std::chrono::milliseconds(250)));
    }

private:
    PeriodicThread thread_;
};

class LeaseRenewer {
public:
    using StatsFn = std::function<std::optional<ServerStats>()>;
    LeaseRenewer(LookupRegistry& registry, std::string id, Duration period, StatsFn stats)
        : thread_(period, [this, &registry, id = std::move(id), stats = std::move(stats)] {
              if (!paused_) registry.renew(id, stats());
          }) {}
    // Stops renewing without telling the registry, as a crashed or hung process would.
    void pause() { paused_ = true; }
    void stop() { thread_.stop(); }

private:
    std::atomic<bool> paused_{false};
    PeriodicThread thread_; // last: stops before paused_ goes away
};

} // namespace dynexec
