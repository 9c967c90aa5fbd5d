// When a compute server renews its lease, registers again or gives the head up, and when a client
// pings the head or takes it for gone: pure state on an injected clock, driven by the event loops.
#pragma once

#include "common/clock.hpp"

#include <optional>

namespace dynexec::remote {

// The compute server's side of its lease.
class LeaseKeeper {
public:
    LeaseKeeper(const Clock& clock, Duration head_timeout, Duration renew_every);

    void hello_sent();  // a registration went out: until its welcome, more `expired` answers do not repeat it
    void heard();       // any message from the head
    void welcomed(Duration lease, Duration renew_every);
    // The head says our lease is gone: true if a new hello should go out now (once per registration;
    // again if the last one stayed unanswered for kHelloRetry).
    bool expired();
    bool renew_due();   // true once per renew interval
    bool head_silent() const;        // nothing heard for head_timeout
    Duration silent_for() const;

    static constexpr Duration kHelloRetry = std::chrono::seconds(2);

private:
    const Clock& clock_;
    Duration head_timeout_, renew_every_;
    TimePoint last_heard_, next_renew_, hello_at_;
    bool registering_ = false;
};

// The client's view of its head: alive while it answers; gone once its connection has been down for
// `grace` or it stayed silent for `patience` while jobs were out (pings ask it to say something).
class HeadWatch {
public:
    HeadWatch(const Clock& clock, Duration patience, Duration grace);

    void heard();
    void connection(bool up); // from the socket's monitor
    // True when a ping should go out now: jobs are out and the head has been quiet for a while.
    bool ping_due(bool waiting);
    // Why the head counts as gone, once it does; then for good.
    std::optional<const char*> lost(bool waiting);

private:
    const Clock& clock_;
    Duration patience_, grace_;
    TimePoint last_heard_, last_ping_;
    std::optional<TimePoint> down_since_;
    const char* lost_ = nullptr;
};

} // namespace dynexec::remote
