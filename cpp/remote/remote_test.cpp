// The head, a compute server in a thread and a client, over real ZeroMQ sockets on loopback.
#include "common/errors.hpp"
#include "engine/engine.hpp"
#include "remote/client.hpp"
#include "remote/server_host.hpp"

#include <fmt/format.h>
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

// A client's noop job submitted while no server is registered runs on the next one that joins.
void noop_waits_for_the_next_server(const Cluster& cl, double x) {
    remote::Client client(cl.client_options());
    auto id = client.submit("noop", {{"x", x}}, "me");
    remote::ServerHost next(cl.host_options());
    std::thread t([&] { next.run(); });
    auto results = collect(client, 1);
    next.stop();
    t.join();
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0].job_id, id);
    EXPECT_EQ(std::get<double>(results[0].value), x);
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

    noop_waits_for_the_next_server(cl, 1.0);
}

namespace {
// A peer speaking the wire protocol by hand, to send what a dynexec process never would.
struct RawPeer {
    zmq::context_t ctx;
    zmq::socket_t sock{ctx, zmq::socket_type::dealer};
    RawPeer(const Cluster& cl, const wire::CurveKeys& keys) {
        wire::make_curve_client(sock, cl.server_keys.public_key, keys);
        sock.set(zmq::sockopt::linger, 0);
        sock.set(zmq::sockopt::rcvtimeo, 5000);
        sock.connect(cl.engine.endpoint());
    }
    void send(wire::Frames f) { zmq::send_multipart(sock, f); }
    wire::Frames recv() {
        wire::Frames f;
        if (!zmq::recv_multipart(sock, std::back_inserter(f))) throw std::runtime_error("no answer within 5 s");
        return f;
    }
};
} // namespace

TEST(Remote, PeersOfAnotherProtocolVersionAreRefusedNamingBothVersions) {
    Cluster cl;
    RawPeer server(cl, cl.compute_keys);
    wire::HelloServer hello;
    hello.version = 1;
    hello.host = "old-host";
    hello.pid = 4242;
    server.send(wire::encode(hello));
    auto f = server.recv();
    ASSERT_EQ(wire::type_of(f), wire::Type::refused);
    auto why = wire::decode<wire::Refused>(f).reason;
    EXPECT_NE(why.find(fmt::format("version {}", wire::kProtocolVersion)), std::string::npos) << why;
    EXPECT_NE(why.find("version 1"), std::string::npos) << why;
    EXPECT_TRUE(cl.engine.servers().empty());

    RawPeer client(cl, cl.client_keys);
    client.send(wire::encode(wire::HelloClient{1, "me"}));
    auto c = client.recv();
    ASSERT_EQ(wire::type_of(c), wire::Type::error);
    auto e = wire::decode<wire::ErrorReply>(c);
    EXPECT_NE(e.message.find(fmt::format("version {}", wire::kProtocolVersion)), std::string::npos) << e.message;
    EXPECT_NE(e.message.find("version 1"), std::string::npos) << e.message;
}

TEST(Remote, AClientCanUseOnlyTheJobIdsItWasGivenAndEachOnce) {
    Cluster cl;
    RawPeer client(cl, cl.client_keys);
    client.send(wire::encode(wire::HelloClient{wire::kProtocolVersion, "me"}));
    auto w = client.recv();
    ASSERT_EQ(wire::type_of(w), wire::Type::welcome_client);
    auto welcome = wire::decode<wire::WelcomeClient>(w);
    ASSERT_GT(welcome.ids.count, 2u);
    auto id = [&](std::uint64_t seq) { return JobIdGenerator::id(welcome.session, seq); };
    auto first = welcome.ids.first;
    wire::Submit s{"me", {}};
    s.jobs.push_back({id(first), "noop", {{"x", 1.0}}, {}});                          // its own: accepted (waits)
    s.jobs.push_back({id(first), "noop", {{"x", 1.0}}, {}});                          // the same again: refused
    s.jobs.push_back({"01ZZZZZZZZZZZZZZ-0000000009", "noop", {{"x", 1.0}}, {}});   // another session: refused
    s.jobs.push_back({id(first + welcome.ids.count + 5), "noop", {{"x", 1.0}}, {}}); // not given: refused
    s.jobs.push_back({id(first + 1), "noop", {{"x", 1.0}}, {}}); // its own, but after a later one: refused
    client.send(wire::encode(s));
    auto r = client.recv();
    ASSERT_EQ(wire::type_of(r), wire::Type::results);
    auto results = wire::decode<wire::Results>(r).results;
    ASSERT_EQ(results.size(), 4u);
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(results[i].error_type, "InvalidJobError");
        EXPECT_NE(results[i].message.find("was not given to this client"), std::string::npos) << results[i].message;
    }
    // A job with an ID of a new block but a bad service fails as such: the head checks it too.
    client.send(wire::encode(wire::MoreIds{7, 10}));
    auto more = client.recv();
    ASSERT_EQ(wire::type_of(more), wire::Type::ids);
    auto block = wire::decode<wire::IdsReply>(more);
    EXPECT_EQ(block.request, 7u);
    client.send(wire::encode(wire::Submit{"me", {{id(block.ids.first), "no.such", {}, {}}}}));
    auto rb = client.recv();
    ASSERT_EQ(wire::type_of(rb), wire::Type::results);
    auto unknown = wire::decode<wire::Results>(rb).results;
    ASSERT_EQ(unknown.size(), 1u);
    EXPECT_EQ(unknown[0].error_type, "UnknownServiceError");
    // A job description that the archive could not keep as text is refused, naming the field (one that is not
    // UTF-8 is refused by the decoder already, as every string).
    client.send(wire::encode(wire::Submit{
        "me", {{id(block.ids.first + 1), "noop", {{"x", 1.0}}, {}, {"f", "", "", std::string("a\0b", 3), ""}}}}));
    auto rl = client.recv();
    ASSERT_EQ(wire::type_of(rl), wire::Type::results);
    auto bad_label = wire::decode<wire::Results>(rl).results;
    ASSERT_EQ(bad_label.size(), 1u);
    EXPECT_EQ(bad_label[0].error_type, "InvalidJobError");
    EXPECT_NE(bad_label[0].message.find("its label holds a NUL character"), std::string::npos) << bad_label[0].message;
    EXPECT_EQ(cl.engine.backlog().waiting.size(), 1u); // the one valid job waits for a server
    EXPECT_TRUE(cl.engine.cancel(id(first))); // else the engine's shutdown waits for it
}

TEST(Remote, ACancelRightAfterASubmitReachesTheHeadAfterIt) {
    Cluster cl;
    remote::Client client(cl.client_options());
    for (int i = 0; i < 20; ++i) {
        auto id = client.submit("noop", {{"x", 1.0}}, "me"); // no server: it waits in the balancer
        EXPECT_TRUE(client.cancel(id)) << "the cancel overtook the submit of " << id;
    }
    auto ids = client.submit_many("noop", std::vector<Params>(100, Params{{"x", 2.0}}), "me");
    auto cancelled = client.cancel_many(ids);
    EXPECT_EQ(std::count(cancelled.begin(), cancelled.end(), true), 100);
    EXPECT_EQ(collect(client, 120).size(), 120u); // each comes back, cancelled
}

TEST(Remote, AServerRedeclaringAServiceWithOtherParametersIsRefusedAndTheClusterGoesOn) {
    Cluster cl;
    RawPeer rogue(cl, cl.compute_keys);
    wire::HelloServer hello;
    hello.host = "rogue";
    hello.pid = 99;
    hello.services.push_back({"noop", "", {{"x", ValueType::string, std::nullopt, ""}}, {}});
    rogue.send(wire::encode(hello));
    auto f = rogue.recv();
    ASSERT_EQ(wire::type_of(f), wire::Type::refused);
    auto why = wire::decode<wire::Refused>(f).reason;
    EXPECT_NE(why.find("noop"), std::string::npos) << why;
    EXPECT_NE(why.find("x: str"), std::string::npos) << why; // its signature, and the head's beside it
    EXPECT_TRUE(cl.engine.servers().empty());

    noop_waits_for_the_next_server(cl, 2.5); // the head's signature still holds
}
