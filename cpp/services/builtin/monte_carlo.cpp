// Monte Carlo and closed-form pricing services: pi.monte_carlo, option.european,
// option.black_scholes. Deterministic for a given seed whatever the thread count
// (see the reproducibility contract in builtin.hpp).
#include "services/builtin/builtin.hpp"

#include <tbb/blocked_range.h>
#include <tbb/parallel_reduce.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace dynexec::builtin {
namespace {

// Samples per random-number block. Fixed: changing it changes every seeded result.
constexpr std::uint64_t kPiBlock = 1 << 16;
constexpr std::uint64_t kOptionBlock = 1 << 13; // antithetic pairs per block

std::uint64_t positive_samples(const Params& p) {
    auto n = p.get<std::int64_t>("samples");
    if (n <= 0) throw std::invalid_argument(fmt::format("samples must be positive, got {}", n));
    return static_cast<std::uint64_t>(n);
}

std::uint64_t seed_of(const Params& p) { return static_cast<std::uint64_t>(p.get<std::int64_t>("seed")); }

Value pi_monte_carlo(const Params& p) {
    const std::uint64_t samples = positive_samples(p);
    const std::uint64_t seed = seed_of(p);
    const std::uint64_t blocks = (samples + kPiBlock - 1) / kPiBlock;
    // Integer counts: the sum is exact, so any split gives the same answer.
    const std::uint64_t inside = tbb::parallel_reduce(
        tbb::blocked_range<std::uint64_t>(0, blocks, 1), std::uint64_t{0},
        [&](const tbb::blocked_range<std::uint64_t>& r, std::uint64_t acc) {
            for (std::uint64_t b = r.begin(); b != r.end(); ++b) {
                auto rng = Xoshiro256ss::for_block(seed, b);
                const std::uint64_t n = std::min(kPiBlock, samples - b * kPiBlock);
                std::uint64_t hits = 0;
                for (std::uint64_t i = 0; i < n; ++i) {
                    const double x = rng.uniform(), y = rng.uniform();
                    hits += (x * x + y * y < 1.0);
                }
                acc += hits;
            }
            return acc;
        },
        [](std::uint64_t a, std::uint64_t b) { return a + b; });
    return 4.0 * static_cast<double>(inside) / static_cast<double>(samples);
}

// The market parameters shared by both option services, checked.
struct Market {
    double spot, strike, rate, volatility, maturity;
    bool call;
};

Market market_of(const Params& p) {
    Market m;
    m.spot = require_positive("spot", p.get<double>("spot"));
    m.strike = require_positive("strike", p.get<double>("strike"));
    m.rate = require_finite("rate", p.get<double>("rate"));
    m.volatility = require_positive("volatility", p.get<double>("volatility"));
    m.maturity = require_positive("maturity", p.get<double>("maturity"));
    const auto& kind = p.get<std::string>("kind");
    if (kind == "call") m.call = true;
    else if (kind == "put") m.call = false;
    else throw std::invalid_argument(fmt::format("kind must be 'call' or 'put', got '{}'", kind));
    return m;
}

// Count, mean and sum of squared deviations; merged with Chan et al.'s formula.
struct Moments {
    double n = 0, mean = 0, m2 = 0;
    void add(double y) {
        n += 1;
        const double d = y - mean;
        mean += d / n;
        m2 += d * (y - mean);
    }
    static Moments merge(const Moments& a, const Moments& b) {
        if (a.n == 0) return b;
        if (b.n == 0) return a;
        Moments m;
        m.n = a.n + b.n;
        const double d = b.mean - a.mean;
        m.mean = a.mean + d * (b.n / m.n);
        m.m2 = a.m2 + b.m2 + d * d * (a.n * b.n / m.n);
        return m;
    }
};

// European option under geometric Brownian motion, antithetic variates: each
// normal z gives the paths z and -z, and the mean of their two payoffs is one
// sample. Returns [discounted price, standard error of the price].
Value option_european(const Params& p) {
    const Market m = market_of(p);
    const auto requested = p.get<std::int64_t>("samples");
    if (requested < 4)
        throw std::invalid_argument(fmt::format("samples must be at least 4 (two antithetic pairs), got {}", requested));
    const std::uint64_t pairs = (static_cast<std::uint64_t>(requested) + 1) / 2;
    const std::uint64_t seed = seed_of(p);
    const std::uint64_t blocks = (pairs + kOptionBlock - 1) / kOptionBlock;

    const double drift = (m.rate - 0.5 * m.volatility * m.volatility) * m.maturity;
    const double diffusion = m.volatility * std::sqrt(m.maturity);
    const double forward_part = m.spot * std::exp(drift);
    auto payoff = [&](double z) {
        const double st = forward_part * std::exp(diffusion * z);
        return m.call ? std::max(st - m.strike, 0.0) : std::max(m.strike - st, 0.0);
    };

    // Floating-point sums: the deterministic reduce splits and joins the same
    // way whatever the thread count, so the result depends on the seed alone.
    const Moments total = tbb::parallel_deterministic_reduce(
        tbb::blocked_range<std::uint64_t>(0, blocks, 1), Moments{},
        [&](const tbb::blocked_range<std::uint64_t>& r, Moments acc) {
            for (std::uint64_t b = r.begin(); b != r.end(); ++b) {
                auto rng = Xoshiro256ss::for_block(seed, b);
                const std::uint64_t n = std::min(kOptionBlock, pairs - b * kOptionBlock);
                Moments block;
                for (std::uint64_t i = 0; i < n; i += 2) {
                    double z0, z1;
                    rng.normal_pair(z0, z1);
                    block.add(0.5 * (payoff(z0) + payoff(-z0)));
                    if (i + 1 < n) block.add(0.5 * (payoff(z1) + payoff(-z1)));
                }
                acc = Moments::merge(acc, block);
            }
            return acc;
        },
        [](const Moments& a, const Moments& b) { return Moments::merge(a, b); });

    const double discount = std::exp(-m.rate * m.maturity);
    const double variance = total.m2 / (total.n - 1);
    auto [arr, out] = Array::allocate<double>({2});
    out[0] = discount * total.mean;
    out[1] = discount * std::sqrt(variance / total.n);
    return std::move(arr);
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

Value option_black_scholes(const Params& p) {
    const Market m = market_of(p);
    const double vol_sqrt_t = m.volatility * std::sqrt(m.maturity);
    const double d1 = (std::log(m.spot / m.strike) + (m.rate + 0.5 * m.volatility * m.volatility) * m.maturity) / vol_sqrt_t;
    const double d2 = d1 - vol_sqrt_t;
    const double discounted_strike = m.strike * std::exp(-m.rate * m.maturity);
    return m.call ? m.spot * normal_cdf(d1) - discounted_strike * normal_cdf(d2)
                  : discounted_strike * normal_cdf(-d2) - m.spot * normal_cdf(-d1);
}

std::vector<ParamSpec> market_params() {
    return {
        {"spot", ValueType::real, std::nullopt, "price of the underlying now (> 0)"},
        {"strike", ValueType::real, std::nullopt, "strike price (> 0)"},
        {"rate", ValueType::real, std::nullopt, "continuously compounded risk-free rate"},
        {"volatility", ValueType::real, std::nullopt, "annualised volatility (> 0)"},
        {"maturity", ValueType::real, std::nullopt, "time to expiry in years (> 0)"},
        {"kind", ValueType::string, Value(std::string("call")), "'call' or 'put'"},
    };
}

} // namespace

void add_monte_carlo_services(ServiceRegistrar& r) {
    r.add({"pi.monte_carlo",
           "Estimate pi from `samples` uniform points in the unit square. Parallel; the result depends only on "
           "(samples, seed). Returns a float.",
           {{"samples", ValueType::integer, Value(std::int64_t{1'000'000}), "number of points (> 0)"},
            {"seed", ValueType::integer, Value(std::int64_t{0}), "random seed"}},
           pi_monte_carlo});

    auto european = market_params();
    european.push_back({"samples", ValueType::integer, Value(std::int64_t{1'000'000}),
                        "simulated paths (>= 4), antithetic pairs counted as two"});
    european.push_back({"seed", ValueType::integer, Value(std::int64_t{0}), "random seed"});
    r.add({"option.european",
           "Price a European call or put by Monte Carlo under geometric Brownian motion with antithetic variates. "
           "Parallel; the result depends only on the parameters and seed. Returns a float64 array [price, standard "
           "error].",
           std::move(european), option_european});

    r.add({"option.black_scholes", "Closed-form Black-Scholes price of a European call or put. Returns a float.",
           market_params(), option_black_scholes});
}

} // namespace dynexec::builtin
