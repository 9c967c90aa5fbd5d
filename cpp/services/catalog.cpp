#include "services/catalog.hpp"

#include "common/errors.hpp"
#include "common/objects.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <dlfcn.h>

#include <filesystem>

#include <algorithm>
#include <cctype>

namespace dynexec {

ServiceCatalog& ServiceCatalog::process() {
    static ServiceCatalog* catalog = [] {
        auto* c = new ServiceCatalog(); // never destroyed: services may run during exit
        register_builtin_services(*c);
        return c;
    }();
    return *catalog;
}

namespace {

void check_def(const ServiceDef& def) {
    bool ok = !def.name.empty() && def.name.front() != '.' && def.name.back() != '.';
    for (char c : def.name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_');
    if (!ok) throw std::invalid_argument(fmt::format("invalid service name '{}': use letters, digits, '.' and '_'", def.name));
    if (!def.fn) throw std::invalid_argument(fmt::format("service '{}' has no function", def.name));
    for (auto& p : def.params)
        if (p.default_value && p.type != ValueType::any && type_of(*p.default_value) != p.type)
            throw std::invalid_argument(fmt::format("service '{}': the default of '{}' is {}, not {}", def.name, p.name,
                                                    type_name(*p.default_value), type_name(p.type)));
}

} // namespace

void ServiceCatalog::add(ServiceDef def) { add_all({std::move(def)}, ""); }

void ServiceCatalog::add_all(std::vector<ServiceDef> defs, const std::string& origin) {
    auto where = origin.empty() ? std::string() : fmt::format("plugin '{}': ", origin);
    for (auto& d : defs) check_def(d);
    std::lock_guard lk(mu_);
    for (std::size_t i = 0; i < defs.size(); ++i) {
        bool repeated = std::any_of(defs.begin(), defs.begin() + i, [&](auto& d) { return d.name == defs[i].name; });
        if (repeated || by_name_.count(defs[i].name))
            throw std::invalid_argument(fmt::format("{}service '{}' is already registered", where, defs[i].name));
    }
    for (auto& d : defs) {
        order_.push_back(d.name);
        auto name = d.name;
        by_name_.emplace(std::move(name), std::make_shared<const ServiceDef>(std::move(d)));
    }
}

ServicePtr ServiceCatalog::find(std::string_view name) const {
    std::lock_guard lk(mu_);
    auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : it->second;
}

std::vector<ServicePtr> ServiceCatalog::all() const {
    std::lock_guard lk(mu_);
    std::vector<ServicePtr> out;
    for (auto& n : order_) out.push_back(by_name_.at(n));
    return out;
}

std::uint64_t ServiceCatalog::version() const {
    std::lock_guard lk(mu_);
    return order_.size();
}

std::vector<std::string> ServiceCatalog::load_plugin(const std::string& path) {
    std::error_code ec;
    auto canonical = std::filesystem::canonical(path, ec).string();
    {
        std::lock_guard lk(mu_);
        if (auto it = plugins_.find(canonical); !ec && it != plugins_.end()) return it->second;
    }
    // RTLD_LOCAL: plugins cannot clash with each other's symbols. Never dlclose'd,
    // since arrays they return may outlive any handle we hold.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) throw std::invalid_argument(fmt::format("cannot load service plugin '{}': {}", path, dlerror()));
    using Entry = void (*)(ServiceRegistrar&);
    auto entry = reinterpret_cast<Entry>(dlsym(h, "dynexec_register_services"));
    if (!entry)
        throw std::invalid_argument(
            fmt::format("'{}' is not a dynexec service plugin: it has no dynexec_register_services "
                        "(define it with DYNEXEC_SERVICES from <dynexec/service.hpp>)",
                        path));

    // Collect first, so that a plugin that fails half-way adds nothing.
    struct Collector : ServiceRegistrar {
        std::vector<ServiceDef> defs;
        void add(ServiceDef d) override { defs.push_back(std::move(d)); }
    } collector;
    entry(collector);
    std::vector<std::string> names;
    for (auto& d : collector.defs) names.push_back(d.name);
    add_all(std::move(collector.defs), path);
    std::lock_guard lk(mu_);
    if (!ec) plugins_[canonical] = names;
    return names;
}

namespace {

bool fits(ValueType declared, const Value& v) {
    return declared == ValueType::any || type_of(v) == declared ||
           (declared == ValueType::real && std::holds_alternative<std::int64_t>(v));
}

} // namespace

void unknown_service(const std::string& name, std::vector<std::string> offered) {
    std::sort(offered.begin(), offered.end());
    throw UnknownService(fmt::format("unknown service '{}': no compute server offers it (offered: {})", name,
                                     offered.empty() ? "none yet" : fmt::format("{}", fmt::join(offered, ", "))));
}

Params validate_params(const ServiceDef& def, const Params& given) {
    for (auto& [name, value] : given) {
        if (auto key = object_key(name); !key.empty()) { // an object the job refers to (common/objects.hpp)
            if (!valid_object_key(key))
                throw InvalidJob(fmt::format("service '{}': parameter '{}' is no object key (the '{}' and {} hex digits)",
                                             def.name, name.substr(0, 40), kObjectPrefix, kObjectKeySize));
            if (!std::holds_alternative<Bytes>(value) && !std::holds_alternative<Array>(value))
                throw InvalidJob(fmt::format("service '{}': object parameter '{}' must be bytes, not {}", def.name,
                                             name, type_name(value)));
            continue;
        }
        auto spec = std::find_if(def.params.begin(), def.params.end(), [&](auto& p) { return p.name == name; });
        if (spec == def.params.end()) {
            std::vector<std::string> known;
            for (auto& p : def.params) known.push_back(p.name);
            throw InvalidJob(fmt::format("service '{}' has no parameter '{}' (its parameters: {})", def.name, name,
                                         known.empty() ? "none" : fmt::format("{}", fmt::join(known, ", "))));
        }
    }
    Params out;
    for (auto& spec : def.params) {
        const Value* v = given.find(spec.name);
        if (!v) {
            if (!spec.default_value)
                throw InvalidJob(fmt::format("service '{}' needs parameter '{}' ({})", def.name, spec.name, type_name(spec.type)));
            out.set(spec.name, *spec.default_value);
            continue;
        }
        if (!fits(spec.type, *v))
            throw InvalidJob(fmt::format("service '{}': parameter '{}' must be {}, not {}", def.name, spec.name,
                                         type_name(spec.type), type_name(*v)));
        if (spec.type == ValueType::real && std::holds_alternative<std::int64_t>(*v))
            out.set(spec.name, static_cast<double>(std::get<std::int64_t>(*v)));
        else
            out.set(spec.name, *v);
    }
    for (auto& [name, value] : given)
        if (!object_key(name).empty()) out.set(name, value);
    return out;
}

} // namespace dynexec
