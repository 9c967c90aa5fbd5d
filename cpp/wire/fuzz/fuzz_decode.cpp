// libFuzzer target: every message decoder, on frames as a peer could send them. Refusals (std::runtime_error)
// are the expected outcome; a crash, sanitizer report, hang or other exception is a bug.
#include "wire/fuzz/frames.hpp"

#include <cstdlib>
#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    auto frames = dynexec::wire::fuzz::split(data, size);
    try {
        dynexec::wire::decode_any(frames);
    } catch (const std::runtime_error&) {
    }
    return 0;
}
