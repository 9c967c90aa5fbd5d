#include "registry/lookup_registry.hpp"
#include "testing/fakes.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using namespace dynexec::testing;
using namespace std::chrono_literals;

TEST(LeaseTable, GrantRenewExpireCancel) {
    LeaseTable t;
    TimePoint now{};
    EXPECT_EQ(t.grant("a", 10s, now), now + 10s);
    t.grant("b", 5s, now);
    EXPECT_TRUE(t.live("a", now + 9s));
    EXPECT_EQ(t.renew("a", now + 8s), now + 18s);
    EXPECT_FALSE(t.renew("b", now + 5s)); // expiry is exclusive: at 5 s the lease is over
    EXPECT_EQ(t.next_expiry(), now + 5s);
    EXPECT_EQ(t.take_expired(now + 6s), std::vector<std::string>{"b"});
    EXPECT_TRUE(t.take_expired(now + 17s).empty());
    EXPECT_TRUE(t.cancel("a"));
    EXPECT_FALSE(t.cancel("a"));
    EXPECT_EQ(t.size(), 0u);
    EXPECT_THROW(t.grant("c", 0s, now), std::invalid_argument);
}

TEST(LeaseTable, ExpiresOldestFirst) {
    LeaseTable t;
    TimePoint now{};
    t.grant("late", 3s, now);
    t.grant("early", 1s, now);
    t.grant("middle", 2s, now);
    EXPECT_EQ(t.take_expired(now + 5s), (std::vector<std::string>{"early", "middle", "late"}));
}

struct RegistryTest : ::testing::Test {
    FakeClock clock;
    LookupRegistry registry{clock};
    std::vector<RegistryEvent> events;
    void SetUp() override {
        registry.subscribe([this](const RegistryEvent& e) { events.push_back(e); });
    }
};

TEST_F(RegistryTest, JoinIsHeardAtOnceAndLookupFindsIt) {
    auto e = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].what, RegistryEvent::What::joined);
    EXPECT_EQ(events[0].entry.id, e.id);
    EXPECT_EQ(e.expiry, clock.now() + 2s);
    EXPECT_EQ(registry.lookup(Kind::compute_server).size(), 1u);
    EXPECT_EQ(registry.lookup(Kind::compute_server, "test.echo").size(), 1u);
    EXPECT_TRUE(registry.lookup(Kind::compute_server, "other").empty());
    EXPECT_TRUE(registry.lookup(Kind::load_balancer).empty());
    EXPECT_EQ(registry.find_service("test.echo")->name, "test.echo");
    EXPECT_EQ(registry.find_service("other"), nullptr);
}

TEST_F(RegistryTest, RenewedLeaseLivesOnUnrenewedOneVanishes) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    auto b = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    clock.advance(1500ms);
    ASSERT_TRUE(registry.renew(a.id, ServerStats{7, 1.5, 0, 0}));
    clock.advance(1000ms); // b is past its expiry, a is not
    auto live = registry.lookup(Kind::compute_server);
    ASSERT_EQ(live.size(), 1u); // gone from lookups before the reaper has run
    EXPECT_EQ(live[0].id, a.id);
    EXPECT_EQ(live[0].stats.jobs_done, 7u);
    EXPECT_EQ(events.size(), 2u);
    registry.expire_due();
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[2].what, RegistryEvent::What::left);
    EXPECT_EQ(events[2].entry.id, b.id);
    EXPECT_EQ(events[2].reason, "lease expired");
    EXPECT_FALSE(registry.renew(b.id)); // too late: it must join again
    EXPECT_FALSE(registry.get(b.id));
}

TEST_F(RegistryTest, CancelRemovesAtOnce) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    EXPECT_TRUE(registry.cancel(a.id));
    EXPECT_FALSE(registry.cancel(a.id));
    EXPECT_TRUE(registry.lookup(Kind::compute_server).empty());
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[1].reason, "cancelled");
    registry.expire_due();
    EXPECT_EQ(events.size(), 2u); // no second leave
}

TEST_F(RegistryTest, LookupKeepsRegistrationOrderAndIdsAreUnique) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    auto b = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    Registration lb;
    lb.kind = Kind::load_balancer;
    auto c = registry.join(lb, 2s);
    EXPECT_NE(a.id, b.id);
    auto live = registry.lookup(Kind::compute_server);
    ASSERT_EQ(live.size(), 2u);
    EXPECT_EQ(live[0].id, a.id);
    EXPECT_EQ(live[1].id, b.id);
    EXPECT_EQ(registry.lookup(Kind::load_balancer).at(0).id, c.id);
}

TEST_F(RegistryTest, SetServicesChangesWhatIsOffered) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    registry.set_services(a.id, {test_service("new.one")});
    EXPECT_TRUE(registry.lookup(Kind::compute_server, "test.echo").empty());
    EXPECT_EQ(registry.lookup(Kind::compute_server, "new.one").size(), 1u);
}
