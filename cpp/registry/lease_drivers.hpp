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
    LeaseReaper(LookupRegistry& registry, Duration period)
        : thread_(period, [&registry] { registry.expire_due(); }) {}
    void stop() { thread_.stop(); }

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
