// CURVE security for every dynexec connection. The connection file holds the
// head's public key and the cluster's client key pair (the secret): a peer that
// does not hold it fails the handshake, so nothing it sends is ever read.
#pragma once

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <atomic>
#include <string>
#include <string_view>
#include <thread>

namespace dynexec::wire {

struct CurveKeys {
    std::string public_key, secret_key; // Z85, 40 characters each
    static CurveKeys generate();
};

// The 32 raw bytes of a Z85 key; throws std::invalid_argument on anything else (it may come from a peer).
std::string decode_curve_key(const std::string& z85);

// Answers ZeroMQ's authentication requests (ZAP) in `ctx`: only `allowed_client_key` gets in.
class ZapAuthenticator {
public:
    ZapAuthenticator(zmq::context_t& ctx, const std::string& allowed_client_key);
    ~ZapAuthenticator();

private:
    void run(zmq::socket_t sock);
    std::string allowed_; // 32 raw bytes
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
