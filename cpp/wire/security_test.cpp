// Roles: which peer may send what, and the ZAP handler naming a peer's role from its key.
#include "wire/security.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using wire::Role;

TEST(Security, EachRoleMaySendOnlyItsTypes) {
    EXPECT_TRUE(wire::may_send(Role::server, 1));   // hello_server
    EXPECT_TRUE(wire::may_send(Role::server, 3));   // result
    EXPECT_FALSE(wire::may_send(Role::server, 33)); // submit
    EXPECT_TRUE(wire::may_send(Role::client, 33));
    EXPECT_FALSE(wire::may_send(Role::client, 25)); // echo: the head's word to its servers
    EXPECT_FALSE(wire::may_send(Role::client, 1));
    EXPECT_FALSE(wire::may_send(Role::client, 3));
    EXPECT_TRUE(wire::may_send(Role::both, 1));
    EXPECT_TRUE(wire::may_send(Role::both, 33));
    for (int t = 0; t < 256; ++t) EXPECT_FALSE(wire::may_send(Role::none, std::uint8_t(t)));
    EXPECT_FALSE(wire::may_send(Role::both, 0));
    EXPECT_FALSE(wire::may_send(Role::both, 16)); // welcome: the head's own
    EXPECT_FALSE(wire::may_send(Role::both, 48)); // reply: the head's own
}

TEST(Security, ABadKeyIsNamedNeverShown) {
    auto k = wire::CurveKeys::generate();
    EXPECT_NO_THROW(wire::check_key("client_secret_key", k.secret_key));
    for (std::string bad : {k.secret_key.substr(0, 39), k.secret_key + "x", std::string(39, 'a') + "~",
                            std::string(40, '#')}) {
        try {
            wire::check_key("client_secret_key", bad);
            ADD_FAILURE() << "accepted a bad key";
        } catch (const std::invalid_argument& e) {
            std::string what = e.what();
            EXPECT_NE(what.find("client_secret_key"), std::string::npos) << what;
            EXPECT_EQ(what.find(bad), std::string::npos) << what;
            EXPECT_EQ(what.find(k.secret_key.substr(0, 20)), std::string::npos) << what;
        }
    }
    auto other = wire::CurveKeys::generate();
    zmq::context_t ctx;
    EXPECT_THROW(wire::ZapAuthenticator(ctx, other.public_key, other.public_key), std::invalid_argument);
}

TEST(Security, TheZapHandlerNamesThePeersRole) {
    auto head = wire::CurveKeys::generate(), server = wire::CurveKeys::generate(),
         client = wire::CurveKeys::generate();
    zmq::context_t ctx;
    wire::ZapAuthenticator zap(ctx, server.public_key, client.public_key);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    wire::make_curve_server(router, head);
    router.set(zmq::sockopt::rcvtimeo, 5000);
    router.bind("tcp://127.0.0.1:*");
    auto endpoint = router.get(zmq::sockopt::last_endpoint);
    wire::RoleGate gate(true);
    auto send_from = [&](const wire::CurveKeys& keys, std::uint8_t type) {
        zmq::socket_t d(ctx, zmq::socket_type::dealer);
        d.set(zmq::sockopt::linger, 0);
        wire::make_curve_client(d, head.public_key, keys);
        d.connect(endpoint);
        (void)d.send(zmq::buffer(&type, 1));
        std::vector<zmq::message_t> frames;
        EXPECT_TRUE(zmq::recv_multipart(router, std::back_inserter(frames)));
        EXPECT_EQ(frames.size(), 2u);
        auto peer = frames.front().to_string();
        frames.erase(frames.begin()); // as the head's loop hands them on: the routing id apart
        return std::make_pair(peer, std::move(frames));
    };
    auto [server_peer, from_server] = send_from(server, 1);
    ASSERT_EQ(from_server.size(), 1u);
    EXPECT_EQ(wire::role_of(from_server[0]), Role::server);
    EXPECT_TRUE(gate.admit(server_peer, from_server));
    auto [client_peer, from_client] = send_from(client, 1); // a client posing as a server
    ASSERT_EQ(from_client.size(), 1u);
    EXPECT_EQ(wire::role_of(from_client[0]), Role::client);
    EXPECT_FALSE(gate.admit(client_peer, from_client));
    auto [peer33, submit] = send_from(client, 33);
    EXPECT_TRUE(gate.admit(peer33, submit));
    EXPECT_TRUE(wire::RoleGate(false).admit(client_peer, from_client)); // no CURVE (ipc://): both roles
}
