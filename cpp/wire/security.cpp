#include "wire/security.hpp"

#include <fmt/format.h>

#include <iostream>
#include <stdexcept>

namespace dynexec::wire {
namespace {

std::string decode_key(std::string_view field, const std::string& z85) {
    check_key(field, z85);
    std::string raw(32, '\0');
    zmq_z85_decode(reinterpret_cast<std::uint8_t*>(raw.data()), z85.c_str());
    return raw;
}

constexpr std::string_view z85_chars =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

constexpr std::size_t max_logged = 1024; // peers reported; beyond that, drops are silent

} // namespace

void check_key(std::string_view field, const std::string& z85) {
    if (z85.size() != 40)
        throw std::invalid_argument(
            fmt::format("{}: a CURVE key has 40 Z85 characters, this one has {}", field, z85.size()));
    if (z85.find_first_not_of(z85_chars) != std::string::npos)
        throw std::invalid_argument(fmt::format("{}: a CURVE key has Z85 characters only", field));
    std::uint8_t raw[32];
    if (!zmq_z85_decode(raw, z85.c_str())) // e.g. a value too large for its 5-character group
        throw std::invalid_argument(fmt::format("{}: not a valid Z85 CURVE key", field));
}

std::string_view role_name(Role r) {
    switch (r) {
    case Role::server: return "server";
    case Role::client: return "client";
    case Role::both: return "both";
    default: return "none";
    }
}

Role role_of(const zmq::message_t& frame) {
    // zmq_msg_gets takes a non-const message but only reads its metadata.
    const char* user = zmq_msg_gets(const_cast<zmq_msg_t*>(frame.handle()), "User-Id");
    if (!user) return Role::none;
    std::string_view u(user);
    return u == "server" ? Role::server : u == "client" ? Role::client : Role::none;
}

bool RoleGate::admit(const std::string& peer, const std::vector<zmq::message_t>& frames) {
    if (!curve_) return true;
    if (frames.empty()) return false;
    auto role = role_of(frames[0]);
    std::uint8_t type = frames[0].size() == 1 ? *frames[0].data<std::uint8_t>() : 0;
    if (may_send(role, type)) return true;
    if (logged_.size() < max_logged && logged_.insert(peer).second) {
        const char* address = zmq_msg_gets(const_cast<zmq_msg_t*>(frames[0].handle()), "Peer-Address");
        std::cerr << fmt::format("dynexec head: dropped a message of type {} from {} (credentials of role {}): "
                                 "that role may not send it; later ones from this peer are dropped silently",
                                 int(type), address ? address : "a peer", role_name(role))
                  << std::endl;
    }
    return false;
}

CurveKeys CurveKeys::generate() {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) throw std::runtime_error("ZeroMQ was built without CURVE support");
    return {pub, sec};
}

ZapAuthenticator::ZapAuthenticator(zmq::context_t& ctx, const std::string& server_role_key,
                                   const std::string& client_role_key)
    : server_(decode_key("the compute servers' public key", server_role_key)),
      client_(decode_key("the clients' public key", client_role_key)) {
    if (server_ == client_) // one key for both would give every client the server role
        throw std::invalid_argument("the compute servers' and the clients' public keys must differ");
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
        bool curve = req.size() >= 7 && req[5].to_string() == "CURVE";
        std::string_view user = !curve                         ? ""
                                : req[6].to_string() == server_ ? "server"
                                : req[6].to_string() == client_ ? "client"
                                                                : "";
        bool ok = !user.empty();
        std::vector<zmq::message_t> rep;
        rep.emplace_back(std::string("1.0"));
        rep.emplace_back(req.size() > 1 ? req[1].to_string() : std::string());
        rep.emplace_back(std::string(ok ? "200" : "400"));
        rep.emplace_back(std::string(ok ? "OK" : "not a holder of this cluster's secret"));
        rep.emplace_back(std::string(user)); // the User-Id of every message from this peer
        rep.emplace_back(std::string());
        zmq::send_multipart(sock, rep);
    }
}

void make_curve_server(zmq::socket_t& s, const CurveKeys& server) {
    check_key("the head's secret key", server.secret_key);
    s.set(zmq::sockopt::zap_domain, "dynexec");
    s.set(zmq::sockopt::curve_server, true);
    s.set(zmq::sockopt::curve_secretkey, server.secret_key);
}

void make_curve_client(zmq::socket_t& s, const std::string& server_public, const CurveKeys& client) {
    check_key("server_public_key (the head's)", server_public);
    check_key("the public key", client.public_key);
    check_key("the secret key", client.secret_key);
    s.set(zmq::sockopt::curve_serverkey, server_public);
    s.set(zmq::sockopt::curve_publickey, client.public_key);
    s.set(zmq::sockopt::curve_secretkey, client.secret_key);
}

} // namespace dynexec::wire
