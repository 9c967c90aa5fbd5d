// Limits on what a peer may send: the decoder refuses anything past them before it allocates for it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dynexec::wire {

// Set as ZMQ_MAXMSGSIZE on every socket: ZeroMQ drops a larger frame before allocating it. A 1 GiB
// argument plus its message and headroom fits.
inline constexpr std::int64_t kMaxMessageBytes = std::int64_t(2) << 30;

// Elements of one list, parameter set or msgpack map (msgpack allocates per element before reading them).
inline constexpr std::size_t kMaxCount = std::size_t(1) << 24;
// Parameters of one job (Params::set looks each name up: quadratic in the count).
inline constexpr std::size_t kMaxParams = 4096;
// Bytes of one msgpack string or bin inside a body (larger bytes travel in frames of their own).
inline constexpr std::size_t kMaxStringBytes = std::size_t(kMaxMessageBytes);
// Nesting of msgpack arrays and maps: the deepest real message is about 8 (results -> result -> value -> array).
inline constexpr std::size_t kMaxDepth = 32;
// Dimensions of one array (numpy allows 32 before 2.0, 64 after).
inline constexpr std::size_t kMaxArrayDims = 32;
// Frames of one message: type, body and one per array or large bytes value.
inline constexpr std::size_t kMaxFrames = kMaxCount;

} // namespace dynexec::wire
