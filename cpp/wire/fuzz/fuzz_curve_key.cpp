// libFuzzer target: the CURVE key decoding (Z85), which reads keys from connection files and peers.
#include "wire/security.hpp"

#include <cstdint>
#include <cstdlib>
#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string z85(reinterpret_cast<const char*>(data), size);
    try {
        auto raw = dynexec::wire::decode_curve_key(z85);
        if (raw.size() != 32) std::abort(); // a decoded key is always 32 bytes
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
