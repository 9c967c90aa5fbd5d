#include "registry/lookup_registry.hpp"

#include "common/errors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>

namespace dynexec {
namespace {

bool same_value(const Value& a, const Value& b) {
    if (a.index() != b.index()) return false;
    if (auto* x = std::get_if<Array>(&a)) {
        auto& y = std::get<Array>(b);
        return x->dtype == y.dtype && x->shape == y.shape && x->nbytes == y.nbytes &&
               (x->nbytes == 0 || std::memcmp(x->data, y.data, x->nbytes) == 0);
    }
    return std::visit(
        [&](auto&& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, Array>) return false; // handled above
            else if constexpr (std::is_same_v<T, double>) { // NaN == NaN here: the same declaration
                double y = std::get<double>(b);
                return std::memcmp(&x, &y, sizeof x) == 0;
            } else return x == std::get<T>(b);
        },
        a);
}

bool same_signature(const ServiceDef& a, const ServiceDef& b) {
    return std::equal(a.params.begin(), a.params.end(), b.params.begin(), b.params.end(),
                      [](const ParamSpec& p, const ParamSpec& q) {
                          return p.name == q.name && p.type == q.type &&
                                 p.default_value.has_value() == q.default_value.has_value() &&
                                 (!p.default_value || same_value(*p.default_value, *q.default_value));
                      });
}

// A default as the message shows it: scalars in full (up to a length), others by type and size.
std::string shown(const Value& v) {
    constexpr std::size_t kMax = 40;
    auto cut = [&](std::string s) { return s.size() > kMax ? s.substr(0, kMax) + "..." : s; };
    if (std::holds_alternative<std::monostate>(v)) return "None";
    if (auto* b = std::get_if<bool>(&v)) return *b ? "True" : "False";
    if (auto* i = std::get_if<std::int64_t>(&v)) return std::to_string(*i);
    if (auto* d = std::get_if<double>(&v)) return fmt::format("{}", *d);
    if (auto* s = std::get_if<std::string>(&v)) return cut(fmt::format("{:?}", *s));
    if (auto* b = std::get_if<Bytes>(&v)) return fmt::format("<{} bytes>", b->data.size());
    if (auto* p = std::get_if<Pickled>(&v)) return fmt::format("<pickle of {} bytes>", p->data.size());
    auto& a = std::get<Array>(v);
    return fmt::format("<ndarray {} [{}]>", a.dtype, fmt::join(a.shape, ", "));
}

std::string signature(const ServiceDef& d) {
    std::string out = d.name + "(";
    for (std::size_t k = 0; k < d.params.size(); ++k) {
        auto& p = d.params[k];
        out += fmt::format("{}{}: {}", k ? ", " : "", p.name, type_name(p.type));
        if (p.default_value) out += " = " + shown(*p.default_value);
    }
    return out + ")";
}

[[noreturn]] void conflict(const ServiceDef& offered, const ServiceDef& known, const std::string& by) {
    throw ServiceConflict(fmt::format("service '{}' is declared as {}, but {} declares it as {}", offered.name,
                                      signature(offered), by, signature(known)));
}

} // namespace

bool Entry::offers(std::string_view service) const {
    return std::any_of(services.begin(), services.end(), [&](const ServicePtr& s) { return s->name == service; });
}

void LookupRegistry::trust_catalog(const ServiceCatalog* catalog) {
    std::lock_guard lk(mu_);
    catalog_ = catalog;
}

void LookupRegistry::check_signatures_locked(const std::vector<ServicePtr>& services, const std::string& self) const {
    auto now = clock_.now();
    for (std::size_t k = 0; k < services.size(); ++k) {
        auto& s = *services[k];
        if (catalog_)
            if (auto known = catalog_->find(s.name); known && !same_signature(s, *known)) conflict(s, *known, "the head");
        for (std::size_t j = 0; j < k; ++j)
            if (services[j]->name == s.name && !same_signature(s, *services[j]))
                conflict(s, *services[j], "the same registration");
        for (auto& [id, e] : entries_) {
            if (id == self || lapsed_locked(e, now)) continue;
            for (auto& other : e.services)
                if (other->name == s.name && !same_signature(s, *other)) conflict(s, *other, fmt::format("{} (on {})", id, e.host));
        }
    }
}

Entry LookupRegistry::join(Registration reg, Duration lease) {
    Entry e;
    static_cast<Registration&>(e) = std::move(reg);
    {
        std::lock_guard lk(mu_);
        catch_up_locked(clock_.now());
        check_signatures_locked(e.services, "");
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
        check_signatures_locked(services, id);
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
