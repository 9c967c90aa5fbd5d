// The lookup registry: compute servers and load balancers, each on a lease.
// Answers "who offers service S now?" and tells listeners at once of every
// join and leave. Thread-safe; time comes from the injected Clock, and
// expire_due() is called by whoever drives it (a LeaseReaper, or a test).
#pragma once

#include "common/clock.hpp"
#include "registry/lease_table.hpp"
#include "registry/proxies.hpp"
#include "services/catalog.hpp"

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dynexec {

enum class Kind { compute_server, load_balancer };

struct Registration {
    Kind kind = Kind::compute_server;
    std::string host;
    int pid = 0;
    std::vector<ServicePtr> services; // what a compute server offers
    std::shared_ptr<ComputeServerProxy> server;
    std::shared_ptr<LoadBalancerProxy> balancer;
};

struct Entry : Registration {
    std::string id; // e.g. "server-3", "balancer-1"
    TimePoint expiry;
    ServerStats stats; // as published with the last renewal
    bool offers(std::string_view service) const;
};

// A compute server as shown to users.
struct ServerInfo {
    std::string id, host;
    int pid = 0;
    double lease_expiry = 0; // wall seconds
    std::vector<std::string> services;
    ServerStats stats;
};

struct RegistryEvent {
    enum class What { joined, left, changed } what; // changed: what a server offers
    Entry entry;
    std::string reason; // for a leave: "lease expired", "cancelled", or how its process ended
    bool clean = false; // a leave the server announced or was asked for: what it held had not crashed with it
    bool died = false;  // its process is known to have ended (a signal, an exit code)
};

class LookupRegistry {
public:
    using Listener = std::function<void(const RegistryEvent&)>;

    explicit LookupRegistry(const Clock& clock = SteadyClock::instance()) : clock_(clock), last_alive_(clock.now()) {}
    // Drops the entries first: a proxy released here may unsubscribe from this registry on its way out.
    ~LookupRegistry() { std::exchange(entries_, {}).clear(); }

    // Registers an entity on a lease of `lease` and returns its entry. Joined listeners hear at once.
    // Throws ServiceConflict, and changes nothing, if it declares a service that a live entry or the
    // trusted catalog declares with other parameters (names, types, defaults).
    Entry join(Registration reg, Duration lease);
    // Renews a live lease (publishing `stats` for a compute server); false if it has expired or was cancelled.
    bool renew(const std::string& id, const std::optional<ServerStats>& stats = std::nullopt);
    // Ends a lease now; listeners hear of the leave, with `reason`. Not `clean`: the server ended with the
    // jobs it ran (`died`: its process is known to have ended).
    bool cancel(const std::string& id, std::string reason = "cancelled", bool clean = true, bool died = false);
    // Removes every entry whose lease has run out; listeners hear of each.
    void expire_due();
    // Calls (expire_due, renewals, ...) more than `gap` apart mean this whole process was stopped (SIGSTOP,
    // Ctrl-Z): no renewal could have been seen meanwhile, so every lease live before the gap runs its full
    // duration from the first call after it instead of all expiring at once. Off until called.
    void detect_stalls(Duration gap);
    // The thread that reads renewals is held up from now to resume_expiry() (it handles one large argument
    // or result): meanwhile no lease expires for want of a renewal it could not read, and afterwards every
    // lease live when it began runs its full duration again. Holds nest.
    void pause_expiry();
    void resume_expiry();
    // Replaces what a compute server offers (after a plugin loads). Throws ServiceConflict as join does.
    void set_services(const std::string& id, std::vector<ServicePtr> services);
    // The head's own services: the signatures that win over any a server declares. Outlives this registry.
    void trust_catalog(const ServiceCatalog* catalog);

    // Live entries of `kind` (offering `service`, if given), oldest registration first.
    std::vector<Entry> lookup(Kind kind, std::optional<std::string_view> service = std::nullopt) const;
    std::optional<Entry> get(const std::string& id) const;
    // The declaration of `service` from any live server offering it.
    ServicePtr find_service(std::string_view service) const;

    int subscribe(Listener l);
    void unsubscribe(int token);

    const Clock& clock() const { return clock_; }
    // Changes on every join, leave and change of services (not on renewals): lets callers cache lookups.
    std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

private:
    void notify(const std::vector<RegistryEvent>& events);
    bool stalled_locked(TimePoint now) const { return now - last_alive_ > stall_gap_; }
    // Past its expiry, unless that is only because of a stall not caught up with yet.
    bool lapsed_locked(const Entry& e, TimePoint now) const {
        return paused_ == 0 && e.expiry <= now && !(stalled_locked(now) && e.expiry > last_alive_);
    }
    void catch_up_locked(TimePoint now);
    // Throws ServiceConflict if `services` disagree with the catalog, live entries other than `self`, or
    // each other.
    void check_signatures_locked(const std::vector<ServicePtr>& services, const std::string& self) const;

    const Clock& clock_;
    mutable std::mutex mu_;
    LeaseTable leases_;
    std::unordered_map<std::string, Entry> entries_;
    std::vector<std::string> order_; // registration order
    std::uint64_t next_id_ = 0;
    std::atomic<std::uint64_t> generation_{0};
    Duration stall_gap_ = Duration::max();
    const ServiceCatalog* catalog_ = nullptr;
    TimePoint last_alive_; // the last call that could have seen a renewal
    int paused_ = 0;       // pause_expiry() holds
    TimePoint paused_since_{};

    std::mutex listeners_mu_; // held while notifying: events reach each listener in order
    std::vector<std::pair<int, Listener>> listeners_;
    int next_token_ = 0;
};

// pause_expiry() for a scope, if `on`.
class ExpiryPause {
public:
    ExpiryPause(LookupRegistry& r, bool on) : r_(on ? &r : nullptr) {
        if (r_) r_->pause_expiry();
    }
    ~ExpiryPause() {
        if (r_) r_->resume_expiry();
    }
    ExpiryPause(const ExpiryPause&) = delete;
    ExpiryPause& operator=(const ExpiryPause&) = delete;

private:
    LookupRegistry* r_;
};

} // namespace dynexec
