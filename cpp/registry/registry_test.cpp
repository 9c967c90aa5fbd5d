#include "common/errors.hpp"
#include "registry/lease_drivers.hpp"
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

TEST(LeaseTable, ExtendStalledGivesLeasesLiveBeforeTheStallAFullDurationFromNow) {
    LeaseTable t;
    TimePoint now{};
    t.grant("gone", 1s, now);   // ran out before the stall began: stays due
    t.grant("short", 3s, now);  // ran out during the stall
    t.grant("long", 60s, now);  // live, but its renewals during the stall were not seen either
    auto since = now + 2s, resumed = now + 10s;
    EXPECT_EQ(t.extend_stalled(since, resumed), 2u);
    EXPECT_EQ(t.expiry("short"), resumed + 3s);
    EXPECT_EQ(t.expiry("long"), resumed + 60s);
    EXPECT_EQ(t.extend_stalled(resumed, resumed), 0u); // already a full duration ahead
    EXPECT_EQ(t.take_expired(resumed), std::vector<std::string>{"gone"});
}

// The reaper runs every few ms; a gap of seconds means the whole process was stopped (SIGSTOP, Ctrl-Z),
// during which the servers' renewals could not be read: they must not all be dropped at once.
TEST_F(RegistryTest, AStalledProcessKeepsTheLeasesItCouldNotSeeRenewed) {
    registry.detect_stalls(250ms);
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    auto b = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    Registration lb;
    lb.kind = Kind::load_balancer;
    auto c = registry.join(lb, 2s);
    clock.advance(10s); // stopped for far longer than the lease
    // Before the reaper has caught up, lookups do not declare them gone (nor start a second balancer).
    EXPECT_EQ(registry.lookup(Kind::compute_server).size(), 2u);
    EXPECT_EQ(registry.lookup(Kind::load_balancer).size(), 1u);
    registry.expire_due();
    EXPECT_EQ(events.size(), 3u); // joins only: nobody left
    EXPECT_EQ(registry.get(a.id)->expiry, clock.now() + 2s);
    ASSERT_TRUE(registry.renew(b.id)); // the renewals queued during the stall arrive
    ASSERT_TRUE(registry.renew(c.id));
    // a has really died: once the process runs normally, its lease runs out as usual.
    for (int i = 0; i < 25; ++i) {
        clock.advance(100ms);
        registry.expire_due();
        if (i % 5 == 0) {
            registry.renew(b.id);
            registry.renew(c.id);
        }
    }
    ASSERT_EQ(events.size(), 4u);
    EXPECT_EQ(events[3].entry.id, a.id);
    EXPECT_EQ(events[3].reason, "lease expired");
    EXPECT_TRUE(registry.get(b.id));
}

TEST_F(RegistryTest, ARenewalAfterAStallIsHonouredBeforeTheReaperRuns) {
    registry.detect_stalls(250ms);
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    clock.advance(5s);
    EXPECT_TRUE(registry.renew(a.id)); // the hub's thread may wake before the reaper's
    registry.expire_due();
    EXPECT_EQ(events.size(), 1u);
}

TEST_F(RegistryTest, WithoutStallDetectionOrForShortGapsLeasesRunOutOnTime) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    clock.advance(5s);
    EXPECT_FALSE(registry.renew(a.id));
    registry.expire_due();
    ASSERT_EQ(events.size(), 2u);

    registry.detect_stalls(250ms);
    auto b = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    for (int i = 0; i < 21; ++i) { // the reaper keeps its pace: an unrenewed lease expires
        clock.advance(100ms);
        registry.expire_due();
    }
    ASSERT_EQ(events.size(), 4u);
    EXPECT_EQ(events[3].entry.id, b.id);
}

TEST(LeaseReaper, StallGapIsFarAboveItsPeriod) {
    EXPECT_EQ(LeaseReaper::stall_gap(std::chrono::milliseconds(5)), std::chrono::milliseconds(250));
    EXPECT_EQ(LeaseReaper::stall_gap(std::chrono::milliseconds(100)), std::chrono::seconds(5));
}

// Trust: a server may not redeclare a known service with other parameters (submits are checked against one).
ServicePtr declared(std::string name, std::vector<ParamSpec> params) {
    return std::make_shared<const ServiceDef>(ServiceDef{std::move(name), "", std::move(params), {}});
}

TEST_F(RegistryTest, AConflictingSignatureIsRefusedAndChangesNothing) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    auto before = registry.generation();
    // Same name, another default: refused, naming the service and both signatures.
    auto rogue = declared("test.echo", {{"x", ValueType::real, Value{1.0}, ""}});
    try {
        registry.join(server_registration(std::make_shared<FakeServer>(), {rogue}), 2s);
        FAIL() << "a conflicting join was accepted";
    } catch (const ServiceConflict& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("'test.echo'"), std::string::npos) << what;
        EXPECT_NE(what.find("test.echo(x: float = 1)"), std::string::npos) << what;
        EXPECT_NE(what.find("test.echo(x: float = 0)"), std::string::npos) << what;
        EXPECT_NE(what.find(a.id), std::string::npos) << what;
    }
    EXPECT_EQ(registry.lookup(Kind::compute_server).size(), 1u);
    EXPECT_EQ(registry.generation(), before);
    EXPECT_EQ(events.size(), 1u); // no joined event for the refused one
    // Another type, another name, a missing default, an extra parameter: each refused.
    for (auto& params : std::vector<std::vector<ParamSpec>>{{{"x", ValueType::integer, Value{0.0}, ""}},
                                                             {{"y", ValueType::real, Value{0.0}, ""}},
                                                             {{"x", ValueType::real, std::nullopt, ""}},
                                                             {{"x", ValueType::real, Value{0.0}, ""}, {"z", ValueType::any, std::nullopt, ""}}})
        EXPECT_THROW(registry.join(server_registration(std::make_shared<FakeServer>(), {declared("test.echo", params)}), 2s),
                     ServiceConflict);
    // The same signature (the doc may differ) joins.
    auto same = declared("test.echo", {{"x", ValueType::real, Value{0.0}, "other doc"}});
    registry.join(server_registration(std::make_shared<FakeServer>(), {same}), 2s);
    EXPECT_EQ(registry.lookup(Kind::compute_server, "test.echo").size(), 2u);
    EXPECT_EQ(std::get<double>(*registry.find_service("test.echo")->params[0].default_value), 0.0);
}

TEST_F(RegistryTest, ASignatureIsFreeAgainOnceNoLiveServerDeclaresIt) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    auto other = declared("test.echo", {{"y", ValueType::string, std::nullopt, ""}});
    EXPECT_THROW(registry.join(server_registration(std::make_shared<FakeServer>(), {other}), 2s), ServiceConflict);
    clock.advance(3s); // a's lease has run out: lapsed entries do not count, reaped or not
    registry.join(server_registration(std::make_shared<FakeServer>(), {other}), 2s);
    EXPECT_EQ(registry.find_service("test.echo")->params[0].name, "y");
    (void)a;
}

TEST_F(RegistryTest, TheTrustedCatalogWinsEvenWithNoServerLive) {
    ServiceCatalog catalog;
    catalog.add(ServiceDef{"noop", "", {{"n", ValueType::integer, Value{std::int64_t(1)}, ""}}, [](const Params&) { return Value{}; }});
    registry.trust_catalog(&catalog);
    auto rogue = declared("noop", {{"n", ValueType::string, Value{std::string("1")}, ""}});
    try {
        registry.join(server_registration(std::make_shared<FakeServer>(), {test_service(), rogue}), 2s);
        FAIL() << "a join redeclaring a catalog service was accepted";
    } catch (const ServiceConflict& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("the head declares it as noop(n: int = 1)"), std::string::npos) << what;
        EXPECT_NE(what.find("noop(n: str = \"1\")"), std::string::npos) << what;
    }
    EXPECT_TRUE(registry.lookup(Kind::compute_server).empty()); // all or nothing: test.echo did not join either
    EXPECT_TRUE(events.empty());
    registry.join(server_registration(std::make_shared<FakeServer>(), {declared("noop", catalog.find("noop")->params)}), 2s);
    EXPECT_EQ(registry.lookup(Kind::compute_server, "noop").size(), 1u);
}

TEST_F(RegistryTest, SetServicesRefusesAConflictAndKeepsWhatWasOffered) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    auto b = registry.join(server_registration(std::make_shared<FakeServer>(), {test_service("b.only")}), 2s);
    auto rogue = declared("test.echo", {{"x", ValueType::array, std::nullopt, ""}});
    EXPECT_THROW(registry.set_services(b.id, {test_service("b.only"), rogue}), ServiceConflict);
    EXPECT_EQ(registry.get(b.id)->services.size(), 1u);
    EXPECT_EQ(events.size(), 2u); // no changed event
    // Its own declaration may change when nobody else shares it; a duplicate within one offer may not disagree.
    registry.set_services(b.id, {declared("b.only", {})});
    EXPECT_TRUE(registry.get(b.id)->services[0]->params.empty());
    EXPECT_THROW(registry.set_services(a.id, {test_service(), declared("test.echo", {})}), ServiceConflict);
}

// The hub's thread handles one large message for longer than a lease: the renewals behind it wait unread.
TEST_F(RegistryTest, NoLeaseExpiresWhileExpiryIsPausedAndEachRunsItsFullDurationAfter) {
    auto a = registry.join(server_registration(std::make_shared<FakeServer>()), 2s);
    {
        ExpiryPause pause(registry, true);
        ExpiryPause nested(registry, true);
        clock.advance(5s);
        registry.expire_due();
        EXPECT_EQ(registry.lookup(Kind::compute_server).size(), 1u);
    }
    EXPECT_EQ(registry.get(a.id)->expiry, clock.now() + 2s);
    registry.expire_due();
    EXPECT_EQ(events.size(), 1u); // the join only
    ExpiryPause off(registry, false); // not on: leases expire as usual
    clock.advance(2s);
    registry.expire_due();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[1].reason, "lease expired");
}
