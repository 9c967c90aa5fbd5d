// The head's endpoint: one ROUTER socket (CURVE-secured) that compute servers
// in other processes register on, renew their leases through and send results
// to, and that remote clients submit through. One thread owns the socket.
#pragma once

#include "registry/lookup_registry.hpp"
#include "remote/server_proxy.hpp"
#include "wire/security.hpp"

#include <functional>
#include <map>
#include <set>

namespace dynexec::remote {

struct HubOptions {
    std::string bind = "tcp://127.0.0.1:*"; // where to listen
    wire::CurveKeys server_keys;            // the head's own pair
    std::string client_public_key;          // the cluster's client key: the only one let in
};

// What the hub asks of the engine it serves.
struct HubHooks {
    std::function<JobId(const std::string& service, const Params&, const std::string& owner, const JobOptions&,
                        const std::function<void(const JobId&)>& on_id)>
        submit;
    // Answers through the callback, maybe later on another thread (a server must confirm).
    std::function<void(const JobId&, std::function<void(bool)>)> cancel;
    std::function<bool(const JobId&, Status)> kill;
    std::function<std::optional<JobState>(const JobId&)> state;
    std::function<Backlog()> backlog;
    std::function<std::vector<ServerInfo>()> servers;
    std::function<void()> shutdown; // a client asked the whole cluster to stop
    std::function<void(std::vector<OutputChunk>&&)> output; // live output of running jobs (while echo is on)
};

class Hub {
public:
    Hub(LookupRegistry& registry, HubOptions options, HubHooks hooks, Duration lease, Duration renew);
    ~Hub(); // tells every remote server to stop

    const std::string& endpoint() const { return endpoint_; } // as bound, with its real port
    // Takes out of `batch` the results of jobs submitted by remote clients and sends them there.
    void route(std::vector<Result>& batch);
    void stop_servers(); // asks every remote compute server to leave
    // Asks one remote compute server to leave; false if `server_id` is not one of them.
    bool stop_server(const std::string& server_id);
    // Every remote compute server, now and later, loads this plugin and offers its services.
    void load_plugin(const std::string& path);
    // Every remote compute server, now and later, sends what its jobs print while they run (hooks.output).
    void set_echo(bool on);

private:
    void run();
    void handle(const std::string& from, wire::Frames& frames);
    void on_registry_event(const RegistryEvent& ev);
    void reply_error(const std::string& to, std::uint64_t id, const std::exception& e);
    void servers_echo_locked(); // tells servers whether to send live output, if that changed. Needs mu_.
    template <class Fill> void answer(const std::string& to, wire::Frames& frames, Fill fill);

    LookupRegistry& registry_;
    HubOptions options_;
    HubHooks hooks_;
    Duration lease_, renew_;
    zmq::context_t ctx_{kIoThreads};
    wire::ZapAuthenticator zap_;
    zmq::socket_t router_;
    std::string endpoint_;
    Outbox out_;
    int subscription_ = 0;

    std::mutex mu_;
    std::map<std::string, std::shared_ptr<RemoteServerProxy>> by_routing_; // live remote servers
    std::map<std::string, std::string> server_id_;                         // routing id -> registry id
    std::unordered_map<JobId, std::string> client_of_;                     // job -> client routing id
    std::set<std::string> clients_;
    std::set<std::string> echo_clients_; // clients that asked for their jobs' live output
    std::vector<std::string> plugins_; // loaded by every server that joins
    bool echo_ = false;                // told to every server that joins: local_echo_ or a client wants it
    bool local_echo_ = false;          // this process wants the output of its own jobs (set_echo)

    std::atomic<bool> stop_{false};
    std::thread thread_;
};

} // namespace dynexec::remote
