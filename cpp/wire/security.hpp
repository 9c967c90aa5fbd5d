// CURVE security for every dynexec connection. The head lets in two keys: the
// compute servers' and the clients'. Each peer's key names its role, which the
// head checks on every message, so a client cannot pose as a compute server
// (whose results other clients unpickle) and a server cannot submit jobs.
#pragma once

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <thread>

namespace dynexec::wire {

struct CurveKeys {
    std::string public_key, secret_key; // Z85, 40 characters each
    static CurveKeys generate();
};

// Throws std::invalid_argument naming `field` (never the key itself) unless `z85` is a CURVE key.
void check_key(std::string_view field, const std::string& z85);

// What a peer's credentials let it send. The ZAP handler names it in the peer's User-Id.
enum class Role : std::uint8_t { none = 0, server = 1, client = 2, both = server | client };

std::string_view role_name(Role r); // "server", "client", "both", "none"

// The role of the peer that sent `frame` (a frame received on a CURVE server socket): from the
// User-Id the ZAP handler gave it; Role::none if it has none.
Role role_of(const zmq::message_t& frame);

// Whether `role` may send messages of wire type `type` (protocol.hpp): compute servers 1..15,
// clients 32..47.
constexpr bool may_send(Role role, std::uint8_t type) {
    bool server_type = type >= 1 && type <= 15;
    bool client_type = type >= 32 && type <= 47;
    return (server_type && (std::uint8_t(role) & std::uint8_t(Role::server))) ||
           (client_type && (std::uint8_t(role) & std::uint8_t(Role::client)));
}

// The head's check on what it receives: drops a message its sender's role may not send, and says so
// on stderr once per peer (its address, role and the message type; never a key).
class RoleGate {
public:
    // `curve`: the socket uses CURVE. Without (ipc://, in a private directory) every peer has both roles.
    explicit RoleGate(bool curve) : curve_(curve) {}
    // `peer`: the sender's routing id; `frames`: its message, the type frame first.
    bool admit(const std::string& peer, const std::vector<zmq::message_t>& frames);

private:
    bool curve_;
    std::set<std::string> logged_; // routing ids already reported (bounded)
};

// Answers ZeroMQ's authentication requests (ZAP) in `ctx`: only the two keys get in, with the
// User-Id "server" or "client".
class ZapAuthenticator {
public:
    ZapAuthenticator(zmq::context_t& ctx, const std::string& server_role_key, const std::string& client_role_key);
    ~ZapAuthenticator();

private:
    void run(zmq::socket_t sock);
    std::string server_, client_; // 32 raw bytes each
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// A tcp:// endpoint needs CURVE. An ipc:// one does not: its socket file lies in a private (0700)
// directory, so the file system keeps other users out, as it does for the connection file itself;
// local compute servers skip the encryption, which costs more than the copy on large results.
inline bool needs_curve(std::string_view endpoint) { return !endpoint.starts_with("ipc://"); }

void make_curve_server(zmq::socket_t& s, const CurveKeys& server);
void make_curve_client(zmq::socket_t& s, const std::string& server_public, const CurveKeys& client);

} // namespace dynexec::wire
