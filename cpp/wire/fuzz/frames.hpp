// The fuzz input format for multipart messages: frames, each a 2-byte little-endian length and its bytes
// (a length past the end takes what is left). The seed generator writes the same format.
#pragma once

#include "wire/protocol.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace dynexec::wire::fuzz {

inline Frames split(const std::uint8_t* data, std::size_t size) {
    Frames frames;
    std::size_t at = 0;
    while (at + 2 <= size && frames.size() < 64) {
        std::size_t len = data[at] | (std::size_t(data[at + 1]) << 8);
        at += 2;
        len = std::min(len, size - at);
        frames.emplace_back(data + at, len);
        at += len;
    }
    return frames;
}

inline std::string join(const Frames& frames) {
    std::string out;
    for (auto& f : frames) {
        auto len = std::min<std::size_t>(f.size(), 0xffff); // seeds are small; a longer frame is cut
        out += char(len & 0xff);
        out += char(len >> 8);
        out.append(static_cast<const char*>(f.data()), len);
    }
    return out;
}

} // namespace dynexec::wire::fuzz
