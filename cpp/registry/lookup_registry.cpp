#include "registry/lookup_registry.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace dynexec {

bool Entry::offers(std::string_view service) const {
    return std::any_of(services.begin(), services.end(), [&](const ServicePtr& s) { return s->name == service; });
}

Entry LookupRegistry::join(Registration reg, Duration lease) {
    Entry e;
    static_cast<Registration&>(e) = std::move(reg);
    {
        std::lock_guard lk(mu_);
        catch_up_locked(clock_.now());
        e.id = fmt::format("{}-{}", e.kind == Kind::compute_server ? "server" : "balancer", ++next_id_);
        e.expiry = leases_.grant(e.id, lease, clock_.now());
        entries_[e.id] = e;
        order_.push_back(e.id);
        ++generation_;
    }
    notify({{RegistryEvent::What::joined, e, ""}});
    return e;
}

bool LookupRegistry::renew(const std::string& id, const std::optional<ServerStats>& stats) {
    std::lock_guard lk(mu_);
    catch_up_locked(clock_.now());
    auto expiry = leases_.renew(id, clock_.now());
    if (!expiry) return false;
    auto& e = entries_.at(id);
    e.expiry = *expiry;
    if (stats) e.stats = *stats;
    return true;
}

bool LookupRegistry::cancel(const std::string& id, std::string reason, bool clean, bool died) {
    std::vector<RegistryEvent> events;
    {
        std::lock_guard lk(mu_);
        catch_up_locked(clock_.now());
        if (!leases_.cancel(id)) return false;
        events.push_back({RegistryEvent::What::left, std::move(entries_.at(id)), std::move(reason), clean, died});
        entries_.erase(id);
        std::erase(order_, id);
        ++generation_;
    }
    notify(events);
    return true;
}

void LookupRegistry::pause_expiry() {
    std::lock_guard lk(mu_);
    if (paused_++ == 0) paused_since_ = clock_.now();
}

void LookupRegistry::resume_expiry() {
    std::lock_guard lk(mu_);
    if (paused_ == 0 || --paused_ > 0) return;
    if (leases_.extend_stalled(paused_since_, clock_.now()))
        for (auto& [id, e] : entries_) e.expiry = leases_.expiry(id).value_or(e.expiry);
}

void LookupRegistry::expire_due() {
    std::vector<RegistryEvent> events;
    {
        std::lock_guard lk(mu_);
        auto now = clock_.now();
        catch_up_locked(now);
        if (paused_) return; // see pause_expiry
        for (auto& id : leases_.take_expired(now)) {
            events.push_back({RegistryEvent::What::left, std::move(entries_.at(id)), "lease expired"});
            entries_.erase(id);
            std::erase(order_, id);
            ++generation_;
        }
    }
    if (!events.empty()) notify(events);
}

void LookupRegistry::detect_stalls(Duration gap) {
    std::lock_guard lk(mu_);
    stall_gap_ = gap;
    last_alive_ = clock_.now();
}

void LookupRegistry::catch_up_locked(TimePoint now) {
    if (stalled_locked(now) && leases_.extend_stalled(last_alive_, now))
        for (auto& [id, e] : entries_) e.expiry = leases_.expiry(id).value_or(e.expiry);
    last_alive_ = std::max(last_alive_, now);
}

void LookupRegistry::set_services(const std::string& id, std::vector<ServicePtr> services) {
    Entry changed;
    {
        std::lock_guard lk(mu_);
        auto it = entries_.find(id);
        if (it == entries_.end()) return;
        it->second.services = std::move(services);
        changed = it->second;
        ++generation_;
    }
    notify({{RegistryEvent::What::changed, std::move(changed), ""}});
}

std::vector<Entry> LookupRegistry::lookup(Kind kind, std::optional<std::string_view> service) const {
    std::lock_guard lk(mu_);
    auto now = clock_.now();
    std::vector<Entry> out;
    for (auto& id : order_) {
        auto& e = entries_.at(id);
        // A lease past its expiry is gone even before the reaper has removed it.
        if (e.kind != kind || lapsed_locked(e, now)) continue;
        if (service && !e.offers(*service)) continue;
        out.push_back(e);
    }
    return out;
}

std::optional<Entry> LookupRegistry::get(const std::string& id) const {
    std::lock_guard lk(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return std::nullopt;
    return it->second;
}

ServicePtr LookupRegistry::find_service(std::string_view service) const {
    std::lock_guard lk(mu_);
    auto now = clock_.now();
    for (auto& [id, e] : entries_)
        if (!lapsed_locked(e, now))
            for (auto& s : e.services)
                if (s->name == service) return s;
    return nullptr;
}

int LookupRegistry::subscribe(Listener l) {
    std::lock_guard lk(listeners_mu_);
    listeners_.emplace_back(++next_token_, std::move(l));
    return next_token_;
}

void LookupRegistry::unsubscribe(int token) {
    std::lock_guard lk(listeners_mu_);
    std::erase_if(listeners_, [&](auto& p) { return p.first == token; });
}

void LookupRegistry::notify(const std::vector<RegistryEvent>& events) {
    std::lock_guard lk(listeners_mu_);
    for (auto& ev : events)
        for (auto& [token, l] : listeners_) l(ev);
}

} // namespace dynexec
