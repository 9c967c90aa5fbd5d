// The head's endpoint: one ROUTER socket (CURVE-secured) that compute servers in other processes register
// on, renew their leases through and send results to, and that remote clients submit through. One thread
// owns the socket (a Loop); what servers send is handled by ServerSide, what clients send by ClientSide.
#pragma once

#include "registry/lookup_registry.hpp"
#include "remote/loop.hpp"
#include "remote/object_store.hpp"
#include "remote/server_proxy.hpp"
#include "wire/security.hpp"

#include <functional>
#include <map>
#include <set>

namespace dynexec::remote {

struct HubOptions {
    std::string bind = "tcp://127.0.0.1:*"; // where to listen
    wire::CurveKeys server_keys;            // the head's own pair
    std::string client_public_key;          // the clients' key: let in with the role "client"
    std::string compute_server_public_key;  // the compute servers' key: let in with the role "server"
};

// What the hub asks of the engine it serves.
struct HubHooks {
    std::string session; // job IDs of this head: <session>-<sequence>
    // Reserves `n` job sequence numbers for a client; returns the first.
    std::function<std::uint64_t(std::uint64_t n)> reserve_ids;
    std::function<std::vector<ServicePtr>()> services; // what the head accepts jobs for
    // Queues jobs whose IDs were reserved; returns the results of those refused (bad input, shutting down).
    // `on_id` runs for each queued job before it can run.
    std::function<std::vector<Result>(std::vector<wire::SubmitJob>&&, const std::string& owner,
                                      const std::function<void(const JobId&)>& on_id)>
        submit;
    // Answers through the callback, maybe later on another thread (a server must confirm).
    std::function<void(const JobId&, std::function<void(bool)>)> cancel;
    std::function<bool(const JobId&, Status)> kill;
    std::function<std::optional<JobState>(const JobId&)> state;
    std::function<Backlog()> backlog;
    std::function<std::vector<ServerInfo>()> servers;
    std::function<void()> shutdown; // a client asked the whole cluster to stop
    std::function<void(std::vector<OutputChunk>&&)> output; // live output of this process's jobs (while echo is on)
};

// Compute servers in other processes: their registrations, leases, dispatches and results.
class ServerSide {
public:
    ServerSide(LookupRegistry& registry, Outbox& out, const HubHooks& hooks, const ObjectStore& objects,
               Duration lease, Duration renew);
    ~ServerSide();
    void handle(const std::string& from, wire::Frames& frames);
    void stop_all();                               // asks every remote compute server to leave
    bool stop_one(const std::string& server_id);   // false if `server_id` is not one of them
    void load_plugin(const std::string& path);     // every server, now and later, loads it
    void set_echo(bool on);                        // servers send live output while on
    void forget(const std::vector<std::string>& keys); // the store dropped these objects: so do the servers
    // Where live output goes: to the clients whose jobs printed it (returns the rest).
    std::function<std::vector<OutputChunk>(std::vector<OutputChunk>&&)> route_output;
    // The proxy and registry ID of a live remote server.
    std::pair<std::shared_ptr<RemoteServerProxy>, std::string> find(const std::string& routing);
    void alive(const std::string& routing); // bytes keep coming from it: its lease holds

private:
    void on(const std::string& from, wire::HelloServer&& m);
    void on(const std::string& from, wire::Offer&& m);
    void on(const std::string& from, wire::Renew&& m);
    void on(const std::string& from, wire::ResultMsg&& m);
    void on(const std::string& from, wire::Started&& m);
    void on(const std::string& from, wire::Revoked&& m);
    void on(const std::string& from, wire::Leaving&& m);
    void on(const std::string& from, wire::OutputMsg&& m);
    void on_registry_event(const RegistryEvent& ev);

    LookupRegistry& registry_;
    Outbox& out_;
    const HubHooks& hooks_;
    const ObjectStore& objects_;
    Duration lease_, renew_;
    int subscription_ = 0;

    std::mutex mu_;
    std::map<std::string, std::shared_ptr<RemoteServerProxy>> by_routing_; // live remote servers
    std::map<std::string, std::string> server_id_;                         // routing id -> registry id
    std::vector<std::string> plugins_; // loaded by every server that joins
    bool echo_ = false;                // told to every server that joins
};

// Remote clients: their job-ID blocks, submits, requests, and the results and output of their jobs.
class ClientSide {
public:
    ClientSide(Outbox& out, const HubHooks& hooks, ObjectStore& objects);
    void handle(const std::string& from, wire::Frames& frames);
    // Takes out of `batch` the results of jobs submitted by remote clients and sends them there.
    void route(std::vector<Result>& batch);
    // Sends clients the live output of their jobs; returns the rest.
    std::vector<OutputChunk> route_output(std::vector<OutputChunk>&& chunks);
    std::function<void(bool)> on_watching; // whether any client wants live output (called on change)
    std::function<void(const std::vector<std::string>&)> on_dropped; // objects no client holds any more

private:
    void on(const std::string& from, wire::HelloClient&& m);
    void on(const std::string& from, wire::Submit&& m);
    void on(const std::string& from, wire::Cancel&& m);
    void on(const std::string& from, wire::Kill&& m);
    void on(const std::string& from, wire::StateQuery&& m);
    void on(const std::string& from, wire::BacklogQuery&& m);
    void on(const std::string& from, wire::ServersQuery&& m);
    void on(const std::string& from, wire::ShutdownCluster&& m);
    void on(const std::string& from, wire::WatchOutput&& m);
    void on(const std::string& from, wire::MoreIds&& m);
    void on(const std::string& from, wire::ServicesQuery&& m);
    void on(const std::string& from, wire::Release&& m);
    // Fills in the objects a job names as kept here (None), and holds those it brings; false if one is missing.
    bool objects_of(const std::string& from, wire::SubmitJob& job, Result& refused);
    void error(const std::string& to, std::uint64_t request, const std::exception& e);
    // Whether `id` is one this client was given and has not used. Needs mu_.
    bool take_id_locked(const std::string& client, const JobId& id);
    wire::IdBlock reserve_locked(const std::string& client, std::uint64_t n);

    Outbox& out_;
    const HubHooks& hooks_;
    ObjectStore& objects_;

    struct Client {
        std::deque<wire::IdBlock> blocks; // given to it, oldest first; IDs are used in order
        std::uint64_t next = 0;            // the lowest unused sequence number of blocks.front()
        bool watching = false;             // wants its jobs' live output
    };
    std::mutex mu_;
    std::map<std::string, Client> clients_;
    std::unordered_map<JobId, std::string> client_of_; // unfinished job -> its client's routing id
    std::size_t watching_ = 0;
};

class Hub {
public:
    Hub(LookupRegistry& registry, HubOptions options, HubHooks hooks, Duration lease, Duration renew);
    ~Hub(); // tells every remote server to stop

    const std::string& endpoint() const { return endpoint_; } // as bound, with its real port
    void route(std::vector<Result>& batch) { clients_.route(batch); }
    void stop_servers() { servers_.stop_all(); }
    bool stop_server(const std::string& server_id) { return servers_.stop_one(server_id); }
    void load_plugin(const std::string& path) { servers_.load_plugin(path); }
    // This process wants the live output of its own jobs (hooks.output).
    void set_echo(bool on);
    // Objects of this process's own jobs (holder ""): held while it says, sent to each server once.
    void hold(const Params& params);
    void release(const std::vector<std::string>& keys);
    const ObjectStore& objects() const { return objects_; }

private:
    void echo_changed();

    HubOptions options_;
    HubHooks hooks_;
    zmq::context_t ctx_{kIoThreads};
    wire::ZapAuthenticator zap_;
    zmq::socket_t router_;
    std::string endpoint_;
    Outbox out_;
    Loop loop_;
    ObjectStore objects_;
    ServerSide servers_;
    ClientSide clients_;
    std::atomic<bool> local_echo_{false}, clients_echo_{false};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

} // namespace dynexec::remote
