// The native-service API: what a plugin includes to add services by name.
//
//   #include <dynexec/service.hpp>
//   DYNEXEC_SERVICES(registrar) {
//       registrar.add({"demo.square", "x*x", {{"x", dynexec::ValueType::real}},
//                      [](const dynexec::Params& p) -> dynexec::Value {
//                          double x = p.get<double>("x"); return x * x; }});
//   }
//
// Header-only: a plugin links nothing from dynexec. A service function runs on a
// compute server's oneTBB arena, so tbb::parallel_for inside it uses that server's
// threads. It may be called from several threads at once. It reports failure by
// throwing; the message reaches the user and the archive.
#pragma once

#include <dynexec/value.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dynexec {

struct ParamSpec {
    std::string name;
    ValueType type = ValueType::any;
    std::optional<Value> default_value; // none: the parameter is required
    std::string doc;
};

using ServiceFn = std::function<Value(const Params&)>;

struct ServiceDef {
    std::string name; // dotted, e.g. "pi.monte_carlo"
    std::string doc;
    std::vector<ParamSpec> params;
    ServiceFn fn;
};

// Receives a plugin's services. Implemented by the core.
class ServiceRegistrar {
public:
    virtual ~ServiceRegistrar() = default;
    virtual void add(ServiceDef def) = 0;
};

} // namespace dynexec

// The one symbol a service plugin exports.
#define DYNEXEC_SERVICES(registrar) \
    extern "C" __attribute__((visibility("default"))) void dynexec_register_services(::dynexec::ServiceRegistrar& registrar)

namespace dynexec {

// Thrown by a service to report a failure with its own type name, traceback and
// payload (the Python runner sends the pickled exception this way).
struct ServiceError : std::runtime_error {
    ServiceError(std::string type, std::string message, std::string traceback = {}, Value payload = {})
        : std::runtime_error(message), type(std::move(type)), traceback(std::move(traceback)),
          payload(std::move(payload)) {}
    std::string type;
    std::string traceback;
    Value payload;
};

} // namespace dynexec
