// Large objects travel once per process: the head's ObjectStore, and what a compute server is sent.
#include "engine/engine.hpp"
#include "remote/client.hpp"
#include "remote/object_store.hpp"
#include "services/catalog.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using namespace std::chrono_literals;

namespace {
Value blob(std::size_t n, std::uint8_t fill) {
    auto [a, span] = Array::allocate<std::uint8_t>({std::int64_t(n)});
    std::fill(span.begin(), span.end(), fill);
    return a;
}
const std::string kKey = "0123456789abcdef0123456789abcdef";
const std::string kOther = "fedcba9876543210fedcba9876543210";
} // namespace

TEST(ObjectKeys, OnlyAtAndThirtyTwoLowercaseHexDigitsNameAnObject) {
    EXPECT_EQ(object_key("@" + kKey), kKey);
    EXPECT_TRUE(object_key("payload").empty());
    EXPECT_TRUE(valid_object_key(kKey));
    EXPECT_FALSE(valid_object_key(kKey.substr(1)));
    EXPECT_FALSE(valid_object_key("0123456789ABCDEF0123456789abcdef"));
    EXPECT_FALSE(valid_object_key("0123456789abcdef0123456789abcdeg"));
    Params p{{"payload", Pickled{"x"}}, {"@" + kKey, blob(4, 1)}};
    ASSERT_EQ(object_keys(p).size(), 1u);
    EXPECT_EQ(object_keys(p)[0], kKey);
}

TEST(ObjectStore, AnObjectIsKeptUntilItsLastHolderReleasesIt) {
    remote::ObjectStore store;
    store.hold("a", kKey, blob(10, 7));
    store.hold("b", kKey, blob(10, 9)); // the same key: the first copy stays
    store.hold("a", kOther, blob(3, 1));
    EXPECT_EQ(store.size(), 2u);
    EXPECT_EQ(store.bytes(), 13u);
    ASSERT_TRUE(store.find("b", kKey));
    EXPECT_EQ(std::get<Array>(*store.find("b", kKey)).view<std::uint8_t>()[0], 7);
    EXPECT_FALSE(store.find("c", kKey)) << "only a holder may name an object it did not send";

    EXPECT_TRUE(store.release("a", {kKey}).empty()); // b holds it still
    EXPECT_TRUE(store.held(kKey));
    EXPECT_FALSE(store.find("a", kKey));
    EXPECT_EQ(store.release("b", {kKey, kKey}), std::vector<std::string>{kKey});
    EXPECT_FALSE(store.held(kKey));
    EXPECT_TRUE(store.release("b", {kKey}).empty()); // twice: nothing more
    EXPECT_EQ(store.release_all("a"), std::vector<std::string>{kOther});
    EXPECT_EQ(store.size(), 0u);
}

namespace {
struct Head {
    wire::CurveKeys server_keys = wire::CurveKeys::generate();
    wire::CurveKeys client_keys = wire::CurveKeys::generate();
    wire::CurveKeys compute_keys = wire::CurveKeys::generate();
    Engine engine{options()};
    EngineOptions options() {
        EngineOptions o;
        o.servers = 0;
        o.lease_seconds = 30; // the raw server below does not renew
        o.listen = remote::HubOptions{"tcp://127.0.0.1:*", server_keys, client_keys.public_key, compute_keys.public_key};
        return o;
    }
};

// A compute server speaking the protocol by hand: it sees exactly what the head sends.
struct RawServer {
    zmq::context_t ctx;
    zmq::socket_t sock{ctx, zmq::socket_type::dealer};
    explicit RawServer(const Head& h) {
        wire::make_curve_client(sock, h.server_keys.public_key, h.compute_keys);
        sock.set(zmq::sockopt::linger, 0);
        sock.set(zmq::sockopt::rcvtimeo, 5000);
        sock.connect(h.engine.endpoint());
        wire::HelloServer hello;
        hello.host = "raw";
        hello.pid = 4321;
        auto noop = ServiceCatalog::process().find("noop");
        hello.services.push_back({noop->name, noop->doc, noop->params, {}});
        send(wire::encode(hello));
        EXPECT_EQ(wire::type_of(recv()), wire::Type::welcome);
    }
    void send(wire::Frames f) { zmq::send_multipart(sock, f); }
    wire::Frames recv() {
        wire::Frames f;
        if (!zmq::recv_multipart(sock, std::back_inserter(f))) throw std::runtime_error("nothing from the head within 5 s");
        return f;
    }
    wire::Frames next(wire::Type t) { // skips what else the head says (echo, plugins)
        for (int i = 0; i < 20; ++i)
            if (auto f = recv(); wire::type_of(f) == t) return f;
        throw std::runtime_error("no such message");
    }
    void finish(const wire::JobMsg& m) {
        Result r;
        r.job_id = m.job->id;
        r.service = m.job->service;
        r.value = 1.0;
        send(wire::encode(wire::ResultMsg{std::move(r), m.attempt}));
    }
};
} // namespace

TEST(Objects, AnObjectGoesToTheHeadAndToAServerOnceAndIsForgottenWhenReleased) {
    Head head;
    RawServer server(head);
    remote::Client client({head.engine.endpoint(), head.server_keys.public_key, head.client_keys, 5});
    const std::string name = "@" + kKey;
    auto big = blob(512 << 10, 42); // under wire::kChunkBytes: one frame, as this raw server reads them
    for (int i = 0; i < 3; ++i) {
        client.submit("noop", {{"x", double(i)}, {name, big}}, "me");
        auto f = server.next(wire::Type::job);
        auto m = wire::decode<wire::JobMsg>(f);
        const Value* v = m.job->params.find(name);
        ASSERT_NE(v, nullptr) << "job " << i << " lost its object parameter";
        if (i == 0) {
            ASSERT_TRUE(std::holds_alternative<Array>(*v));
            EXPECT_EQ(std::get<Array>(*v).nbytes, std::size_t(512 << 10));
            EXPECT_EQ(std::get<Array>(*v).view<std::uint8_t>()[12345], 42);
        } else {
            EXPECT_EQ(v->index(), 0u) << "job " << i << " brought the object again: the server has it";
        }
        server.finish(m);
    }
    client.release({kKey});
    auto ff = server.next(wire::Type::forget);
    auto forget = wire::decode<wire::Forget>(ff);
    EXPECT_EQ(forget.keys, std::vector<std::string>{kKey});

    // After the release the client sends it again with the next job; the server gets it again.
    client.submit("noop", {{"x", 9.0}, {name, big}}, "me");
    auto fj = server.next(wire::Type::job);
    auto m = wire::decode<wire::JobMsg>(fj);
    ASSERT_TRUE(std::holds_alternative<Array>(*m.job->params.find(name)));
    server.finish(m);
    auto deadline = std::chrono::steady_clock::now() + 5s;
    std::size_t got = 0;
    while (got < 4 && std::chrono::steady_clock::now() < deadline) got += client.poll(8, 50ms).size();
    EXPECT_EQ(got, 4u);
}

TEST(Objects, AJobNamingAnObjectItsClientNeverSentIsRefusedNamingIt) {
    Head head;
    zmq::context_t ctx;
    zmq::socket_t sock{ctx, zmq::socket_type::dealer};
    wire::make_curve_client(sock, head.server_keys.public_key, head.client_keys);
    sock.set(zmq::sockopt::linger, 0);
    sock.set(zmq::sockopt::rcvtimeo, 5000);
    sock.connect(head.engine.endpoint());
    zmq::send_multipart(sock, wire::encode(wire::HelloClient{wire::kProtocolVersion, "me"}));
    wire::Frames w;
    ASSERT_TRUE(zmq::recv_multipart(sock, std::back_inserter(w)));
    auto welcome = wire::decode<wire::WelcomeClient>(w);
    wire::Submit s{"me", {}};
    s.jobs.push_back({JobIdGenerator::id(welcome.session, welcome.ids.first), "noop",
                      {{"x", 1.0}, {"@" + kKey, Value{}}}, {}});
    zmq::send_multipart(sock, wire::encode(s));
    wire::Frames r;
    ASSERT_TRUE(zmq::recv_multipart(sock, std::back_inserter(r)));
    auto results = wire::decode<wire::Results>(r).results;
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0].error_type, "InvalidJobError");
    EXPECT_NE(results[0].message.find(kKey), std::string::npos) << results[0].message;
}

TEST(Objects, ForgetAndReleaseWithAMalformedKeyAreRefusedByTheDecoder) {
    auto f = wire::encode(wire::Forget{{"../../etc/passwd"}});
    EXPECT_THROW(wire::decode<wire::Forget>(f), std::runtime_error);
    auto r = wire::encode(wire::Release{{kKey, "XYZ"}});
    EXPECT_THROW(wire::decode<wire::Release>(r), std::runtime_error);
    (void)f, (void)r;
    auto ok = wire::encode(wire::Release{{kKey}});
    EXPECT_EQ(wire::decode<wire::Release>(ok).keys, std::vector<std::string>{kKey});
}
