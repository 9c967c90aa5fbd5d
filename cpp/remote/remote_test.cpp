// The head, a compute server in a thread and a client, over real ZeroMQ sockets on loopback.
#include "common/errors.hpp"
#include "engine/engine.hpp"
#include "remote/client.hpp"
#include "remote/server_host.hpp"

#include <gtest/gtest.h>

#include <thread>

using namespace dynexec;
using namespace std::chrono_literals;

namespace {
struct Cluster {
    wire::CurveKeys server_keys = wire::CurveKeys::generate();
    wire::CurveKeys client_keys = wire::CurveKeys::generate();
    wire::CurveKeys compute_keys = wire::CurveKeys::generate(); // the compute servers' role
    Engine engine{make_options()};

    EngineOptions make_options() {
        EngineOptions o;
        o.servers = 0;
        o.lease_seconds = 0.4;
        o.renew_seconds = 0.05;
        o.listen = remote::HubOptions{"tcp://127.0.0.1:*", server_keys, client_keys.public_key, compute_keys.public_key};
        return o;
    }
    remote::HostOptions host_options() const {
        return {engine.endpoint(), server_keys.public_key, compute_keys, 1, 1, 0, 5.0};
    }
    remote::ClientOptions client_options(double timeout = 5) const {
        return {engine.endpoint(), server_keys.public_key, client_keys, timeout};
    }
};

std::vector<Result> collect(remote::Client& c, std::size_t n) {
    std::vector<Result> out;
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline)
        for (auto& r : c.poll(n, 50ms)) out.push_back(std::move(r));
    return out;
}
} // namespace

TEST(Remote, ServerInAnotherThreadRunsJobsForARemoteClient) {
    Cluster cl;
    remote::ServerHost host(cl.host_options());
    std::thread t([&] { host.run(); });
    ASSERT_EQ(cl.engine.wait_for_servers(1, 5s), 1u);

    remote::Client client(cl.client_options());
    std::vector<JobId> ids;
    for (int i = 0; i < 50; ++i)
        ids.push_back(client.submit("pi.monte_carlo", {{"samples", std::int64_t{1000}}}, "me"));
    auto results = collect(client, 50);
    ASSERT_EQ(results.size(), 50u);
    for (auto& r : results) {
        EXPECT_EQ(r.status, Status::ok);
        EXPECT_NEAR(std::get<double>(r.value), 3.14, 0.3);
        EXPECT_EQ(r.owner, "me");
    }
    EXPECT_THROW(client.submit("no.such", {}, "me"), UnknownService);
    EXPECT_THROW(client.submit("pi.monte_carlo", {{"samples", std::string("x")}}, "me"), InvalidJob);
    auto servers = client.servers();
    ASSERT_EQ(servers.size(), 1u);
    EXPECT_EQ(servers[0].stats.jobs_done, 50u);
    EXPECT_EQ(cl.engine.stats().delivered, 50u); // counted by the head, routed to the client

    host.stop();
    t.join();
}

TEST(Remote, AClientWithoutTheSecretIsRefused) {
    Cluster cl;
    auto opts = cl.client_options(0.5);
    opts.client_keys = wire::CurveKeys::generate(); // not the cluster's
    try {
        remote::Client intruder(opts);
        FAIL() << "connected without the secret";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("refused this client's key"), std::string::npos) << e.what();
    }
    remote::Client ok(cl.client_options());
    EXPECT_TRUE(ok.servers().empty());
}

TEST(Remote, EachRoleSendsOnlyItsOwnMessages) {
    Cluster cl;
    auto posing = cl.host_options();
    posing.client_keys = cl.client_keys; // a client's credentials: its hello_server is dropped
    posing.head_timeout = 0.5;
    remote::ServerHost rogue(posing);
    std::thread t([&] { rogue.run(); });
    remote::ServerHost real(cl.host_options());
    std::thread t2([&] { real.run(); });
    ASSERT_EQ(cl.engine.wait_for_servers(1, 5s), 1u);
    t.join(); // never answered: it leaves once the head has been silent for head_timeout
    EXPECT_TRUE(rogue.id().empty());
    EXPECT_EQ(cl.engine.servers().size(), 1u);

    auto submitter = cl.client_options(0.5);
    submitter.client_keys = cl.compute_keys; // a server's credentials: its hello_client is dropped
    EXPECT_THROW(remote::Client c(submitter), std::runtime_error);
    remote::Client ok(cl.client_options());
    EXPECT_EQ(ok.servers().size(), 1u);
    real.stop();
    t2.join();
}

TEST(Remote, ServerThatFallsSilentLeavesAndItsJobsWaitForTheNext) {
    Cluster cl;
    auto quiet = std::make_unique<remote::ServerHost>(cl.host_options());
    std::thread t([&] { quiet->run(); });
    ASSERT_EQ(cl.engine.wait_for_servers(1, 5s), 1u);
    quiet->stop(); // leaves without a word: its lease runs out
    t.join();
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!cl.engine.servers().empty() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(cl.engine.servers().empty());

    remote::Client client(cl.client_options());
    auto id = client.submit("noop", {{"x", 1.0}}, "me"); // no server now: it waits
    remote::ServerHost next(cl.host_options());
    std::thread t2([&] { next.run(); });
    auto results = collect(client, 1);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0].job_id, id);
    EXPECT_EQ(std::get<double>(results[0].value), 1.0);
    next.stop();
    t2.join();
}
