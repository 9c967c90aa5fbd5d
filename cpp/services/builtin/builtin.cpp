// The services every dynexec process offers without loading a plugin.
#include "services/builtin/builtin.hpp"
#include "services/catalog.hpp"

namespace dynexec {

void register_builtin_services(ServiceRegistrar& r) {
    builtin::add_monte_carlo_services(r);
    builtin::add_utility_services(r);
    builtin::add_array_services(r);
    builtin::add_command_services(r);
}

} // namespace dynexec
