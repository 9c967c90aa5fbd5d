#include "wire/security.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace dynexec::wire {

std::string decode_curve_key(const std::string& z85) {
    if (z85.size() != 40)
        throw std::invalid_argument(fmt::format("a CURVE key has 40 Z85 characters, not {}", z85.size()));
    std::string raw(32, '\0');
    if (!zmq_z85_decode(reinterpret_cast<std::uint8_t*>(raw.data()), z85.c_str()))
        throw std::invalid_argument("invalid Z85 CURVE key");
    return raw;
}

CurveKeys CurveKeys::generate() {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) throw std::runtime_error("ZeroMQ was built without CURVE support");
    return {pub, sec};
}

ZapAuthenticator::ZapAuthenticator(zmq::context_t& ctx, const std::string& allowed_client_key)
    : allowed_(decode_curve_key(allowed_client_key)) {
    zmq::socket_t sock(ctx, zmq::socket_type::rep);
    sock.bind("inproc://zeromq.zap.01"); // bound before any CURVE server socket exists
    thread_ = std::thread([this, s = std::move(sock)]() mutable { run(std::move(s)); });
}

ZapAuthenticator::~ZapAuthenticator() {
    stop_ = true;
    thread_.join();
}

void ZapAuthenticator::run(zmq::socket_t sock) {
    sock.set(zmq::sockopt::linger, 0);
    zmq::pollitem_t item{sock.handle(), 0, ZMQ_POLLIN, 0};
    while (!stop_) {
        zmq::poll(&item, 1, std::chrono::milliseconds(50));
        if (!(item.revents & ZMQ_POLLIN)) continue;
        // ZAP request: version, request id, domain, address, identity, mechanism, credentials...
        std::vector<zmq::message_t> req;
        (void)zmq::recv_multipart(sock, std::back_inserter(req));
        bool ok = req.size() >= 7 && req[5].to_string() == "CURVE" && req[6].to_string() == allowed_;
        std::vector<zmq::message_t> rep;
        rep.emplace_back(std::string("1.0"));
        rep.emplace_back(req.size() > 1 ? req[1].to_string() : std::string());
        rep.emplace_back(std::string(ok ? "200" : "400"));
        rep.emplace_back(std::string(ok ? "OK" : "not a holder of this cluster's secret"));
        rep.emplace_back(std::string(ok ? "dynexec" : ""));
        rep.emplace_back(std::string());
        zmq::send_multipart(sock, rep);
    }
}

void make_curve_server(zmq::socket_t& s, const CurveKeys& server) {
    s.set(zmq::sockopt::zap_domain, "dynexec");
    s.set(zmq::sockopt::curve_server, true);
    s.set(zmq::sockopt::curve_secretkey, server.secret_key);
}

void make_curve_client(zmq::socket_t& s, const std::string& server_public, const CurveKeys& client) {
    s.set(zmq::sockopt::curve_serverkey, server_public);
    s.set(zmq::sockopt::curve_publickey, client.public_key);
    s.set(zmq::sockopt::curve_secretkey, client.secret_key);
}

} // namespace dynexec::wire
