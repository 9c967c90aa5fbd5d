// The engine in one process: a lookup registry with its lease reaper, an
// execution manager, load balancers started on demand, compute servers on
// leases, and the results manager with its archive. Every component reaches
// the others only through the registry's proxies. Thread-safe.
#pragma once

#include "archive/results_archive.hpp"
#include "common/job.hpp"
#include "registry/lookup_registry.hpp"
#include "remote/hub.hpp"
#include "server/output_capture.hpp"

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dynexec {

struct EngineOptions {
    int servers = -1;                // compute servers in this process; negative = one per core
    unsigned slots_per_server = 1;   // jobs each runs at once
    unsigned threads_per_server = 0; // each arena's threads; 0 = every core
    std::string policy = "power_of_two";
    std::optional<std::filesystem::path> archive; // none: results are not archived
    double lease_seconds = 2.0;
    double renew_seconds = 0;        // 0 = a quarter of the lease
    int max_attempts = 3;            // vanished servers a job may outlive
    std::uint64_t seed = 0;          // 0 = random
    std::optional<remote::HubOptions> listen; // accept compute servers and clients from other processes
    ArchiveAccess archive_access = ArchiveAccess::owner; // who may read the archive's files
};

struct EngineStats {
    std::uint64_t submitted = 0, delivered = 0, dispatched = 0, redispatched = 0, lost = 0, stale = 0, stolen = 0;
    std::size_t outstanding = 0;
    std::uint64_t objects_sent = 0; // object data sent to compute servers (each once per server, see common/objects.hpp)
    std::size_t objects_held = 0;   // objects the head holds for their submitters
    std::string archive_error; // last archive write failure, if any
};

class Engine {
public:
    explicit Engine(EngineOptions options); // throws ArchiveError, std::invalid_argument
    ~Engine();                              // shutdown(wait=true)
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    JobId submit(const std::string& service, const Params& params, const std::string& owner,
                 const JobOptions& options = {}, const std::function<void(const JobId&)>& on_id = {},
                 JobInfoPtr info = {});
    // Many jobs of one service at once: far cheaper per job; all are validated before any is queued.
    std::vector<JobId> submit_many(const std::string& service, const std::vector<Params>& params, const std::string& owner,
                                   const JobOptions& options = {}, const std::vector<JobInfoPtr>& infos = {});
    // Session metadata for the archive file's root attributes (script, label, dynexec_version, ...).
    void set_session_info(const std::vector<std::pair<std::string, std::string>>& info);
    // True if the job will never start (it had not); waits for a server in another process to confirm.
    bool cancel(const JobId& id);
    // Many at once: those still waiting in the balancer first, none of them started meanwhile.
    std::vector<bool> cancel_many(const std::vector<JobId>& ids);
    // Jobs submitted from now on that name these objects bring them again (see common/objects.hpp).
    void release(const std::vector<std::string>& keys);
    // Stops a job: cancelled if it has not started, killed if it runs. False if it is not unfinished.
    bool kill(const JobId& id);
    // "queued" or "running" for an unfinished job; empty once it has finished (or for an unknown ID).
    std::string state(const JobId& id) const;
    // The unfinished jobs of every balancer: running, queued on servers, waiting by service.
    Backlog backlog() const;
    // No compute server can be had: every unfinished job fails with this error. Returns how many.
    std::size_t fail_pending(const std::string& error_type, const std::string& message);
    // The compute-server process `pid` on this host has ended (`reason`: a signal, an exit code): its
    // registration goes now, not at lease expiry, and its running jobs count it as a crash. False if no
    // registered server has that pid.
    bool server_exited(int pid, const std::string& reason);
    // Results archived (or, with no archive, finished) since the last poll: at most `max`, waiting up to `timeout`.
    std::vector<Result> poll(std::size_t max, std::chrono::milliseconds timeout);
    // One caller waiting on one job takes its result itself, not through poll() (see common/result_queue.hpp):
    // expect() (false: poll() has it), then await() until it comes, or forget().
    bool expect(const JobId& id);
    std::optional<Result> await(const JobId& id, std::chrono::milliseconds timeout);
    void forget(const JobId& id);

    std::vector<ServerInfo> servers() const;
    std::string add_server(unsigned slots = 1, unsigned threads = 0);
    // Fault injection: the server or balancer goes on running but stops renewing its lease, like a hung host.
    void stop_renewing(const std::string& id);
    // Registers one more load balancer; the execution manager uses the first available. Returns its ID.
    std::string add_balancer();
    std::vector<std::string> balancers() const; // live ones, in the order the manager prefers them
    // Leaves the registry at once (cancels its lease); its queued jobs run elsewhere.
    void remove_server(const std::string& server_id);
    // Servers offer what the process's service catalog holds now (after a plugin was loaded).
    void refresh_services();
    // Remote compute servers load the plugin too; waits up to `timeout` until every one offers `names`.
    void load_plugin(const std::string& path, const std::vector<std::string>& names, std::chrono::milliseconds timeout);

    // Live echo: compute servers in other processes send what their jobs print while they run (nothing is
    // sent while off). In-process servers do not capture output.
    void set_echo(bool on);
    // Output chunks received since the last call, in order: at most `max`, waiting up to `timeout`.
    // Chunks beyond kOutputBacklog bytes not yet polled are dropped (counted in output_dropped()).
    std::vector<OutputChunk> poll_output(std::size_t max, std::chrono::milliseconds timeout);
    std::uint64_t output_dropped() const;
    static constexpr std::size_t kOutputBacklog = kLiveOutputBacklog;

    std::optional<Result> find(const JobId& id) const;
    // Stops taking jobs; cancels those not started if `cancel_pending`; waits for the rest if `wait`.
    void shutdown(bool wait, bool cancel_pending);
    EngineStats stats() const;
    const std::string& session() const;
    const std::optional<std::filesystem::path>& archive() const;
    // Where other processes reach this engine (empty unless it listens).
    std::string endpoint() const;
    // Blocks until `n` compute servers are registered or `timeout` passes; returns how many are.
    std::size_t wait_for_servers(std::size_t n, std::chrono::milliseconds timeout) const;
    // True once a remote client has asked the cluster to stop (waits up to `timeout`).
    bool wait_shutdown_request(std::chrono::milliseconds timeout);

private:
    void refuse_if_closed() const; // throws ShutDown
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace dynexec
