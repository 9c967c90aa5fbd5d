#include "balancer/policies.hpp"

#include <gtest/gtest.h>

#include <map>

using namespace dynexec;

namespace {
Candidate cand(std::string_view id, double busy, double last, std::uint32_t outstanding, unsigned slots = 1) {
    return {id, ServerStats{0, busy, last, outstanding}, outstanding, slots};
}
} // namespace

TEST(Policies, LeastBusyTimePicksLeastTotalBusyTime) {
    auto p = make_policy("least_busy_time", 1);
    std::vector<Candidate> c{cand("a", 5.0, 1, 0), cand("b", 2.0, 9, 3), cand("c", 4.0, 2, 0)};
    EXPECT_EQ(p->choose(c), 1u);
    c[1].stats.busy_time = 4.0; // tie between b and c: the lighter-loaded wins
    EXPECT_EQ(p->choose(c), 2u);
}

TEST(Policies, LeastRecentCompletionPicksTheLongestIdle) {
    auto p = make_policy("least_recent_completion", 1);
    std::vector<Candidate> c{cand("a", 0, 100.0, 0), cand("b", 0, 50.0, 0), cand("c", 0, 75.0, 0)};
    EXPECT_EQ(p->choose(c), 1u);
    c.push_back(cand("never", 0, 0.0, 2)); // never completed: the least recent of all
    EXPECT_EQ(p->choose(c), 3u);
}

TEST(Policies, FewestOutstandingCountsPerSlot) {
    auto p = make_policy("fewest_outstanding", 1);
    std::vector<Candidate> c{cand("a", 0, 0, 3, 1), cand("b", 0, 0, 4, 4), cand("c", 0, 0, 2, 1)};
    EXPECT_EQ(p->choose(c), 1u); // 4 jobs over 4 slots is the lightest load
}

TEST(Policies, RoundRobinCycles) {
    auto p = make_policy("round_robin", 1);
    std::vector<Candidate> c{cand("a", 0, 0, 9), cand("b", 0, 0, 0), cand("c", 0, 0, 0)};
    for (std::size_t i = 0; i < c.size(); ++i) c[i].order = i;
    std::vector<std::size_t> got;
    for (int i = 0; i < 6; ++i) got.push_back(p->choose(c));
    EXPECT_EQ(got, (std::vector<std::size_t>{0, 1, 2, 0, 1, 2}));
    // b is full (not a candidate): the turn passes to c, then back to a, and b's comes again when it has room
    std::vector<Candidate> without_b{c[0], c[2]};
    EXPECT_EQ(p->choose(c), 0u);
    EXPECT_EQ(without_b[p->choose(without_b)].id, "c");
    EXPECT_EQ(without_b[p->choose(without_b)].id, "a");
    EXPECT_EQ(c[p->choose(c)].id, "b");
}

TEST(Policies, PowerOfTwoNeverPicksTheHeavierOfAPairNorTheHeaviestOfAll) {
    auto p = make_policy("power_of_two", 42);
    std::vector<Candidate> two{cand("a", 0, 0, 5), cand("b", 0, 0, 1)};
    for (int i = 0; i < 100; ++i) EXPECT_EQ(p->choose(two), 1u);
    std::vector<Candidate> many{cand("a", 0, 0, 1), cand("b", 0, 0, 2), cand("c", 0, 0, 9), cand("d", 0, 0, 3)};
    std::map<std::size_t, int> hits;
    for (int i = 0; i < 2000; ++i) ++hits[p->choose(many)];
    EXPECT_EQ(hits[2], 0);         // the heaviest loses every pair it is in
    EXPECT_GT(hits[0], hits[1]);   // the lightest wins most
    EXPECT_GT(hits[1], hits[3]);
    EXPECT_GT(hits[3], 0);         // but a sample of two spreads the work
}

TEST(Policies, SingleCandidateAndUnknownName) {
    for (auto name : policy_names()) {
        auto p = make_policy(name, 3);
        std::vector<Candidate> one{cand("a", 1, 1, 1)};
        EXPECT_EQ(p->choose(one), 0u) << name;
        EXPECT_EQ(p->name(), name);
    }
    try {
        make_policy("shortest_queue", 1);
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("power_of_two"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("shortest_queue"), std::string::npos);
    }
}
