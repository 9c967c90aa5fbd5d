// Time, injected: the lease and balancing state read a Clock so tests drive it by hand.
#pragma once

#include <atomic>
#include <chrono>

namespace dynexec {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::time_point<std::chrono::steady_clock, Duration>;

class Clock {
public:
    virtual ~Clock() = default;
    virtual TimePoint now() const = 0;
};

class SteadyClock final : public Clock {
public:
    TimePoint now() const override { return std::chrono::steady_clock::now(); }
    static const SteadyClock& instance() {
        static SteadyClock c;
        return c;
    }
};

// A clock that moves only when told to. Thread-safe.
class FakeClock final : public Clock {
public:
    TimePoint now() const override { return TimePoint(Duration(ns_.load())); }
    void advance(Duration d) { ns_ += d.count(); }

private:
    std::atomic<Duration::rep> ns_{1'000'000'000};
};

inline double seconds(Duration d) { return std::chrono::duration<double>(d).count(); }
// Seconds as a Duration; beyond about 290 years (or infinite) it is "never": a quarter of Duration's range,
// so that sums with it do not overflow.
inline Duration from_seconds(double s) {
    constexpr double never = double(Duration::max().count() / 4) / 1e9;
    if (!(s < never)) return Duration(Duration::max().count() / 4);
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

// Wall-clock seconds since the Unix epoch: what the archive records.
inline double wall_time() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Wall-clock time of a steady time point, for display (lease expiry).
inline double to_wall(TimePoint t) { return wall_time() + seconds(t - SteadyClock::instance().now()); }

} // namespace dynexec
