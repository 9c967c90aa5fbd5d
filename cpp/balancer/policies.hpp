// Balancing policies as pure functions of a snapshot of candidate servers.
// Each is chosen by name; none does I/O or reads a clock.
#pragma once

#include "registry/proxies.hpp"

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dynexec {

struct Candidate {
    std::string_view id;
    ServerStats stats;            // as the server reports them
    std::uint32_t outstanding = 0; // jobs this balancer has on it now
    unsigned slots = 1;
    std::size_t order = 0; // position among every server offering the service, full ones included
    double load() const { return double(outstanding) / double(slots ? slots : 1); }
};

class Policy {
public:
    virtual ~Policy() = default;
    // Index of the most eligible candidate; `candidates` is never empty.
    virtual std::size_t choose(std::span<const Candidate> candidates) = 0;
    virtual std::string_view name() const = 0;
    // False if choose() reads only outstanding and slots: the balancer then skips asking servers for stats.
    virtual bool needs_stats() const { return true; }
};

// "least_busy_time", "least_recent_completion", "power_of_two", "round_robin",
// "fewest_outstanding". Throws std::invalid_argument naming the valid ones.
std::unique_ptr<Policy> make_policy(std::string_view name, std::uint64_t seed);
const std::vector<std::string_view>& policy_names();

} // namespace dynexec
