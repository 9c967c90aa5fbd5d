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

// The results archive could not be created, written or read.
struct ArchiveError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The engine was shut down.
struct ShutDown : std::runtime_error {
    using std::runtime_error::runtime_error;
};

} // namespace dynexec
