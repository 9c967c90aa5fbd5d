// The native services this process can run, by name: the built-in ones, the
// Python-callable runner installed by the bindings, and those of loaded plugins.
#pragma once

#include <dynexec/service.hpp>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dynexec {

using ServicePtr = std::shared_ptr<const ServiceDef>;

// Thread-safe. Services are only ever added, so a ServicePtr stays valid.
class ServiceCatalog final : public ServiceRegistrar {
public:
    ServiceCatalog() = default;
    static ServiceCatalog& process(); // this process's catalog, built-ins included

    void add(ServiceDef def) override; // throws std::invalid_argument on a bad or taken name
    ServicePtr find(std::string_view name) const;
    std::vector<ServicePtr> all() const;
    std::uint64_t version() const; // grows with every add

    // dlopen()s a plugin and calls its dynexec_register_services(); returns the names it added.
    // Loading the same file again adds nothing and returns the same names.
    std::vector<std::string> load_plugin(const std::string& path);

private:
    // All or nothing: every name is checked before any is added.
    void add_all(std::vector<ServiceDef> defs, const std::string& origin);

    mutable std::mutex mu_;
    std::unordered_map<std::string, ServicePtr> by_name_;
    std::vector<std::string> order_;
    std::unordered_map<std::string, std::vector<std::string>> plugins_; // canonical path -> names
};

void register_builtin_services(ServiceRegistrar& r);

// The parameters a job will run with: `given` checked against `def` (unknown,
// missing and mistyped parameters throw InvalidJob naming the parameter),
// ints widened to floats where a float is declared, defaults filled in.
Params validate_params(const ServiceDef& def, const Params& given);
// Throws UnknownService for `name`, listing what is offered.
[[noreturn]] void unknown_service(const std::string& name, std::vector<std::string> offered);

} // namespace dynexec
