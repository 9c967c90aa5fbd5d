// libFuzzer target: the CURVE key decoding (Z85), which reads keys from connection files and peers.
#include "wire/security.hpp"

#include <cstdint>
#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string z85(reinterpret_cast<const char*>(data), size);
    try {
        dynexec::wire::check_key("key", z85); // throws std::invalid_argument on anything but a CURVE key
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
