// Well-formed UTF-8 as Python decodes it: no overlong forms, no surrogates, nothing past U+10FFFF.
// One definition for everything that checks text from a job or a peer (wire, archive, job output).
#pragma once

#include <cstddef>
#include <string_view>

namespace dynexec {

// Length of the well-formed UTF-8 sequence starting at s[i] (i < s.size()), or 0 if there is none.
inline std::size_t utf8_sequence_at(std::string_view s, std::size_t i) {
    auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    unsigned c = b(i);
    if (c < 0x80) return 1;
    std::size_t n;
    unsigned lo = 0x80, hi = 0xBF; // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;      // overlong
        if (c == 0xED) hi = 0x9F;      // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;      // overlong
        if (c == 0xF4) hi = 0x8F;      // past U+10FFFF
    } else return 0;
    if (i + n > s.size()) return 0;    // truncated
    if (b(i + 1) < lo || b(i + 1) > hi) return 0;
    for (std::size_t k = 2; k < n; ++k)
        if ((b(i + k) & 0xC0) != 0x80) return 0;
    return n;
}

// The offset of the first byte of `s` that is not part of well-formed UTF-8; npos if there is none.
inline std::size_t invalid_utf8_at(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        auto n = utf8_sequence_at(s, i);
        if (!n) return i;
        i += n;
    }
    return std::string_view::npos;
}

} // namespace dynexec
