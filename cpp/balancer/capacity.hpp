// How many jobs a load balancer keeps on one compute server at once: its slots
// plus a prefetch sized to hold about `kQueuedWork` of that server's measured
// run time. Long jobs get one spare (so a slot never idles for a round trip);
// tiny jobs get a deep queue (so round trips overlap). Jobs beyond that wait in
// the balancer, where a server that joins or frees a slot takes them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dynexec {

struct Capacity {
    static constexpr double kQueuedWork = 1e-3; // seconds of work queued ahead of each server
    static constexpr std::uint32_t kMaxPrefetch = 1024;
    static constexpr double kWeight = 0.2; // of the newest run time in the moving average

    // `run_seconds`: the server's moving average run time, or a negative number before its first result.
    static std::uint32_t of(unsigned slots, double run_seconds) {
        std::uint32_t prefetch = 1;
        if (run_seconds >= 0) {
            double fits = run_seconds > 0 ? kQueuedWork / run_seconds : double(kMaxPrefetch);
            prefetch = std::uint32_t(std::clamp(std::floor(fits * slots), 1.0, double(kMaxPrefetch)));
        }
        return slots + prefetch;
    }
    static double average(double previous, double sample) {
        return previous < 0 ? sample : previous + kWeight * (sample - previous);
    }
};

} // namespace dynexec
