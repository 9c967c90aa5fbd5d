// Services for measuring dynexec itself: spin.cpu (a job of known CPU cost)
// and noop (a job of no cost, to measure per-job overhead).
#include "services/builtin/builtin.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>

namespace dynexec::builtin {
namespace {

// A loop the compiler can neither vectorise, shorten nor remove: a non-linear
// integer recurrence whose state is forced through a register every turn.
std::uint64_t spin(std::uint64_t iterations, std::uint64_t x) {
    for (std::uint64_t i = 0; i < iterations; ++i) {
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        asm volatile("" : "+r"(x));
    }
    return x;
}

std::atomic<std::uint64_t> g_sink{0}; // keeps results observable

// Iterations of spin() per second on this machine, measured once per process
// (about 25 ms, on first use; thread-safe through the static's initialisation).
// The best of several short windows, so that a preemption during one of them
// does not make every later spin run long.
double spin_rate() {
    static const double rate = [] {
        using clock = std::chrono::steady_clock;
        constexpr std::uint64_t chunk = 1 << 14;
        std::uint64_t x = 0x9E3779B97F4A7C15ull;
        x = spin(1 << 20, x); // warm up (CPU frequency, caches)
        double best = 0;
        for (int window = 0; window < 4; ++window) {
            std::uint64_t n = 0;
            const auto t0 = clock::now();
            double elapsed = 0;
            do {
                x = spin(chunk, x);
                n += chunk;
                elapsed = std::chrono::duration<double>(clock::now() - t0).count();
            } while (elapsed < 0.005);
            best = std::max(best, static_cast<double>(n) / elapsed);
        }
        g_sink.fetch_add(x, std::memory_order_relaxed);
        return best;
    }();
    return rate;
}

Value spin_cpu(const Params& p) {
    const double seconds = p.get<double>("seconds");
    if (!(seconds >= 0) || !std::isfinite(seconds))
        throw std::invalid_argument(fmt::format("seconds must be a non-negative number, got {}", seconds));
    if (seconds == 0) return std::int64_t{0};
    const auto iterations = static_cast<std::uint64_t>(std::llround(seconds * spin_rate()));
    // In slices of about 10 ms, so that a stop request (kill, time limit) ends it promptly.
    const auto slice = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(spin_rate() / 100));
    std::uint64_t done = 0, x = iterations | 1;
    while (done < iterations && !p.stop_requested()) {
        auto n = std::min(slice, iterations - done);
        x = spin(n, x);
        done += n;
    }
    g_sink.fetch_add(x, std::memory_order_relaxed);
    return static_cast<std::int64_t>(done);
}

} // namespace

void add_utility_services(ServiceRegistrar& r) {
    r.add({"spin.cpu",
           "Keep one core busy for about `seconds` of CPU time (an integer loop calibrated once per process, not "
           "clock polling). Single-threaded; stops early when asked (kill, time limit). Returns the number of loop "
           "iterations run.",
           {{"seconds", ValueType::real, std::nullopt, "CPU time to burn (>= 0)"}},
           spin_cpu});
    r.add({"noop", "Return `x` unchanged: a job that costs nothing, for measuring per-job overhead.",
           {{"x", ValueType::any, Value(std::monostate{}), "any value"}},
           [](const Params& p) -> Value { return *p.find("x"); }});
}

} // namespace dynexec::builtin
