// Private to the built-in services: how they are grouped, the random numbers
// they share, and small argument checks. Not part of the plugin API.
#pragma once

#include <dynexec/service.hpp>

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string_view>

namespace dynexec::builtin {

// Each adds one family of services; register_builtin_services() calls them all.
void add_monte_carlo_services(ServiceRegistrar& r); // pi.monte_carlo, option.european, option.black_scholes
void add_utility_services(ServiceRegistrar& r);     // spin.cpu, noop
void add_array_services(ServiceRegistrar& r);       // array.sum, array.scale
void add_command_services(ServiceRegistrar& r);     // command

// ---- random numbers -------------------------------------------------------
//
// Reproducibility contract: a Monte Carlo service splits its samples into
// fixed-size blocks and draws block b from a generator seeded from (seed, b)
// alone. The result therefore depends only on (parameters, seed), never on
// the number of threads or how TBB split the work (reductions of floating
// point values use tbb::parallel_deterministic_reduce).

// SplitMix64's output function: a bijective 64-bit mixer.
constexpr std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct SplitMix64 {
    std::uint64_t state;
    constexpr std::uint64_t next() { return mix64(state += 0x9E3779B97F4A7C15ull); }
};

// xoshiro256** 1.0 (Blackman & Vigna), seeded through SplitMix64 as its authors advise.
class Xoshiro256ss {
public:
    explicit Xoshiro256ss(std::uint64_t seed) {
        SplitMix64 sm{seed};
        for (auto& w : s_) w = sm.next();
    }
    // The stream for block `block` of a run seeded with `seed`.
    static Xoshiro256ss for_block(std::uint64_t seed, std::uint64_t block) {
        return Xoshiro256ss(mix64(seed ^ mix64(block + 0x632BE59BD9B4E019ull)));
    }

    std::uint64_t next() {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }
    // Uniform on [0, 1), 53 random bits.
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
    // Uniform on (0, 1]: safe for log().
    double uniform_open0() { return static_cast<double>((next() >> 11) + 1) * 0x1.0p-53; }
    // Two independent standard normals (Box–Muller).
    void normal_pair(double& z0, double& z1) {
        const double r = std::sqrt(-2.0 * std::log(uniform_open0()));
        const double theta = 2.0 * 3.14159265358979323846 * uniform();
        z0 = r * std::cos(theta);
        z1 = r * std::sin(theta);
    }

private:
    static constexpr std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    std::uint64_t s_[4];
};

// ---- argument checks (std::invalid_argument; the message reaches the user) ----

inline double require_positive(std::string_view name, double v) {
    if (!(v > 0) || !std::isfinite(v))
        throw std::invalid_argument(fmt::format("{} must be a positive number, got {}", name, v));
    return v;
}

inline double require_finite(std::string_view name, double v) {
    if (!std::isfinite(v)) throw std::invalid_argument(fmt::format("{} must be a finite number, got {}", name, v));
    return v;
}

} // namespace dynexec::builtin
