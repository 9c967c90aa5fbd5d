// This machine's name, as registrations report it.
#pragma once

#include <unistd.h>

#include <string>

namespace dynexec {

inline std::string hostname() {
    char buf[256] = {};
    gethostname(buf, sizeof buf - 1);
    return buf;
}

} // namespace dynexec
