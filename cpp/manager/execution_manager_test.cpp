#include "common/errors.hpp"
#include "manager/execution_manager.hpp"
#include "testing/fakes.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using namespace dynexec::testing;
using namespace std::chrono_literals;

namespace {
struct RecordingBalancer final : LoadBalancerProxy {
    std::mutex mu;
    std::vector<JobPtr> jobs;
    void dispatch(JobPtr j) override {
        std::lock_guard lk(mu);
        jobs.push_back(std::move(j));
    }
    void cancel(const JobId&, std::function<void(bool)> done) override { done(false); }
    bool kill(const JobId&, Status) override { return false; }
    std::optional<JobState> state(const JobId&) const override { return std::nullopt; }
    std::size_t fail_all(const std::string&, const std::string&) override { return 0; }
    std::size_t outstanding() const override { return jobs.size(); }
    std::vector<JobPtr> abandon() override {
        std::lock_guard lk(mu);
        return std::exchange(jobs, {});
    }
    std::size_t count() {
        std::lock_guard lk(mu);
        return jobs.size();
    }
};
} // namespace

struct ManagerTest : ::testing::Test {
    FakeClock clock;
    LookupRegistry registry{clock};
    std::vector<std::shared_ptr<RecordingBalancer>> started;
    std::shared_ptr<RecordingBalancer> lb; // the latest started
    JobIdGenerator gen;
    ExecutionManager manager{registry, gen.session(), [this] { start(5s); }};
    void start(Duration lease) {
        lb = started.emplace_back(std::make_shared<RecordingBalancer>());
        Registration r;
        r.kind = Kind::load_balancer;
        r.balancer = lb;
        registry.join(r, lease);
    }
    void SetUp() override { registry.join(server_registration(std::make_shared<FakeServer>()), 2s); }
};

TEST_F(ManagerTest, StartsABalancerOnlyWhenNoneIsRegistered) {
    manager.submit("test.echo", {{"x", 2.0}}, "me");
    manager.submit("test.echo", {}, "me");
    EXPECT_EQ(started.size(), 1u);
    ASSERT_EQ(lb->jobs.size(), 2u);
    EXPECT_EQ(lb->jobs[0]->owner, "me");
    EXPECT_EQ(lb->jobs[1]->params.get<double>("x"), 0.0); // default filled in
}

TEST_F(ManagerTest, JobIdsAreUniqueSortableAndNameTheSession) {
    std::vector<JobId> ids;
    for (int i = 0; i < 20; ++i) ids.push_back(manager.submit("test.echo", {}, "me"));
    EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
    EXPECT_EQ(std::set<JobId>(ids.begin(), ids.end()).size(), ids.size());
    EXPECT_EQ(JobIdGenerator::session_of(ids[0]), manager.session());
    EXPECT_THROW(JobIdGenerator::session_of("not-an-id"), InvalidJob);
}

TEST_F(ManagerTest, BadInputIsRefusedWithItsNameAndQueuesNothing) {
    try {
        manager.submit("no.such", {}, "me");
        FAIL();
    } catch (const UnknownService& e) {
        EXPECT_NE(std::string(e.what()).find("'no.such'"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("test.echo"), std::string::npos); // what is offered
    }
    try {
        manager.submit("test.echo", {{"x", std::string("two")}}, "me");
        FAIL();
    } catch (const InvalidJob& e) {
        EXPECT_NE(std::string(e.what()).find("'x' must be float, not str"), std::string::npos);
    }
    EXPECT_THROW(manager.submit("test.echo", {{"y", 1.0}}, "me"), InvalidJob);
    EXPECT_TRUE(!lb || lb->jobs.empty());
    EXPECT_EQ(manager.submitted(), 0u);
}

TEST_F(ManagerTest, KnownServiceIsAcceptedBeforeAnyServerOffersIt) {
    manager.know({test_service("later.service")});
    manager.submit("later.service", {}, "me");
    EXPECT_EQ(lb->jobs.size(), 1u);
    EXPECT_THROW(manager.submit("never.heard.of", {}, "me"), UnknownService);
}

TEST_F(ManagerTest, ServiceStaysKnownWhileNoServerOffersItForAMoment) {
    manager.submit("test.echo", {}, "me");
    clock.advance(3s);
    registry.expire_due(); // every server gone (the balancer's lease is longer)
    manager.submit("test.echo", {}, "me"); // waits for a server instead of failing
    EXPECT_EQ(lb->count(), 2u);
}

TEST_F(ManagerTest, JobsOfABalancerWhoseLeaseRanOutGoThroughTheNextOne) {
    start(1s);                 // the first registered: the manager uses it
    auto first = lb;
    start(10s);                // a second one registers itself
    auto second = lb;
    manager.submit("test.echo", {}, "me");
    manager.submit("test.echo", {}, "me");
    ASSERT_EQ(first->count(), 2u);
    EXPECT_EQ(second->count(), 0u);
    clock.advance(2s);
    registry.expire_due();     // the first one is gone: its jobs move on
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (second->count() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    EXPECT_EQ(second->count(), 2u);
    EXPECT_EQ(first->count(), 0u);
    manager.submit("test.echo", {}, "me");
    EXPECT_EQ(second->count(), 3u);
    EXPECT_EQ(started.size(), 2u); // no need to start a third
}

TEST_F(ManagerTest, ManyJobsGoOverInOneHandOverOrNoneIfOneIsWrong) {
    auto ids = manager.submit_many("test.echo", {{{"x", 1.0}}, {}, {{"x", 3.0}}}, "me");
    ASSERT_EQ(ids.size(), 3u);
    ASSERT_EQ(lb->count(), 3u);
    EXPECT_EQ(lb->jobs[2]->id, ids[2]);
    EXPECT_EQ(lb->jobs[2]->params.get<double>("x"), 3.0);
    EXPECT_LT(ids[0], ids[1]); // sortable, in submission order
    EXPECT_EQ(manager.submitted(), 3u);
    try {
        manager.submit_many("test.echo", {{{"x", 1.0}}, {{"x", std::string("two")}}, {}}, "me");
        FAIL() << "a wrong parameter was accepted";
    } catch (const InvalidJob& e) {
        EXPECT_NE(std::string(e.what()).find("job 2 of 3"), std::string::npos) << e.what();
    }
    EXPECT_EQ(lb->count(), 3u); // none of the three was queued
    EXPECT_EQ(manager.submitted(), 3u);
}

TEST_F(ManagerTest, ServicesAServerOffersLaterAreAcceptedAtOnce) {
    auto id = registry.lookup(Kind::compute_server).front().id;
    auto before = registry.generation();
    EXPECT_THROW(manager.submit("test.later", {}, "me"), UnknownService);
    registry.set_services(id, {test_service("test.echo"), test_service("test.later")}); // e.g. a plugin loaded
    EXPECT_GT(registry.generation(), before); // cached lookups see the change
    EXPECT_NO_THROW(manager.submit("test.later", {{"x", 1.0}}, "me"));
}
