#include "balancer/policies.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <stdexcept>
#include <tuple>

namespace dynexec {
namespace {

// The seed's criteria order servers by a key; ties go to the lighter-loaded server, then the older one.
template <class Key> std::size_t argmin(std::span<const Candidate> c, Key key) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < c.size(); ++i)
        if (std::make_tuple(key(c[i]), c[i].load()) < std::make_tuple(key(c[best]), c[best].load())) best = i;
    return best;
}

class LeastBusyTime final : public Policy {
public:
    std::size_t choose(std::span<const Candidate> c) override {
        return argmin(c, [](const Candidate& x) { return x.stats.busy_time; });
    }
    std::string_view name() const override { return "least_busy_time"; }
};

class LeastRecentCompletion final : public Policy {
public:
    std::size_t choose(std::span<const Candidate> c) override {
        return argmin(c, [](const Candidate& x) { return x.stats.last_completion; });
    }
    std::string_view name() const override { return "least_recent_completion"; }
};

class FewestOutstanding final : public Policy {
public:
    std::size_t choose(std::span<const Candidate> c) override {
        return argmin(c, [](const Candidate&) { return 0; });
    }
    std::string_view name() const override { return "fewest_outstanding"; }
    bool needs_stats() const override { return false; }
};

class RoundRobin final : public Policy {
public:
    // The next server in registration order after the last one chosen, skipping those not offered (full).
    std::size_t choose(std::span<const Candidate> c) override {
        std::size_t pick = 0;
        for (std::size_t i = 0; i < c.size(); ++i)
            if (c[i].order >= next_) {
                pick = i;
                break;
            }
        next_ = c[pick].order + 1;
        return pick;
    }
    std::string_view name() const override { return "round_robin"; }
    bool needs_stats() const override { return false; }

private:
    std::uint64_t next_ = 0;
};

// Mitzenmacher's power of two choices: two servers at random, the lighter one.
// Robust to stale load figures, unlike "always the shortest queue".
class PowerOfTwo final : public Policy {
public:
    explicit PowerOfTwo(std::uint64_t seed) : rng_(seed) {}
    std::size_t choose(std::span<const Candidate> c) override {
        if (c.size() == 1) return 0;
        std::size_t a = rng_() % c.size();
        std::size_t b = rng_() % (c.size() - 1);
        if (b >= a) ++b;
        return c[b].load() < c[a].load() ? b : a;
    }
    std::string_view name() const override { return "power_of_two"; }
    bool needs_stats() const override { return false; }

private:
    std::mt19937_64 rng_;
};

} // namespace

const std::vector<std::string_view>& policy_names() {
    static const std::vector<std::string_view> names{"least_busy_time", "least_recent_completion", "power_of_two",
                                                     "round_robin", "fewest_outstanding"};
    return names;
}

std::unique_ptr<Policy> make_policy(std::string_view name, std::uint64_t seed) {
    if (name == "least_busy_time") return std::make_unique<LeastBusyTime>();
    if (name == "least_recent_completion") return std::make_unique<LeastRecentCompletion>();
    if (name == "power_of_two") return std::make_unique<PowerOfTwo>(seed);
    if (name == "round_robin") return std::make_unique<RoundRobin>();
    if (name == "fewest_outstanding") return std::make_unique<FewestOutstanding>();
    throw std::invalid_argument(
        fmt::format("unknown balancing policy '{}' (choose one of: {})", name, fmt::join(policy_names(), ", ")));
}

} // namespace dynexec
