// Expected failures, each a type the Python layer maps to its own exception.
#pragma once

#include <stdexcept>
#include <string>

namespace dynexec {

// Bad input to submit(): unknown service, wrong or missing parameter. Nothing was queued.
struct InvalidJob : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// No compute server offers the requested service.
struct UnknownService : InvalidJob {
    using InvalidJob::InvalidJob;
};

// A compute server declares a service by a name the cluster already knows with other parameters: it is
// refused, since submits are checked against one signature per name.
struct ServiceConflict : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// The results archive could not be created, written or read.
struct ArchiveError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The engine was shut down.
struct ShutDown : std::runtime_error {
    using std::runtime_error::runtime_error;
};

} // namespace dynexec
