// CURVE security for every dynexec connection. The connection file holds the
// head's public key and the cluster's client key pair (the secret): a peer that
// does not hold it fails the handshake, so nothing it sends is ever read.
#pragma once

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <atomic>
#include <string>
#include <thread>

namespace dynexec::wire {

struct CurveKeys {
    std::string public_key, secret_key; // Z85, 40 characters each
    static CurveKeys generate();
};

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

void make_curve_server(zmq::socket_t& s, const CurveKeys& server);
void make_curve_client(zmq::socket_t& s, const std::string& server_public, const CurveKeys& client);

} // namespace dynexec::wire
