// Large messages travel in pieces, each a ZeroMQ message of its own: [kChunkType][header][piece].
// Why: ZeroMQ delivers a multipart only once all of it has arrived, and CURVE encrypts one frame at a
// time on the context's I/O thread. In pieces, the receiver sees bytes arriving (the hub counts each
// piece as a sign of life of the server sending it, so its lease holds while a 1 GiB result arrives),
// and no single frame holds an I/O thread (shared by every connection of the process) for long.
// Pieces of one message follow each other on a connection (one sending thread, FIFO), so the receiver
// keeps at most one message in progress per peer.
#pragma once

#include "wire/limits.hpp"
#include "wire/protocol.hpp"

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

namespace dynexec::wire {

constexpr std::uint8_t kChunkType = 0xff;            // not a Type: a piece of a large message
constexpr std::size_t kChunkBytes = std::size_t(1) << 20; // frames larger than this are sent in pieces
constexpr std::uint64_t kMaxChunkedFrame = kMaxMessageBytes; // a reassembled message may be this large, all frames
constexpr std::uint32_t kMaxChunkedFrames = 1u << 16;

struct ChunkHeader {
    std::uint32_t frame = 0, frames = 0; // which frame of the message, of how many
    std::uint64_t frame_size = 0, offset = 0;
};

inline bool needs_chunks(const Frames& frames) {
    for (auto& f : frames)
        if (f.size() > kChunkBytes) return true;
    return false;
}

// Calls send(Frames&&) once per piece; the pieces borrow the frames' bytes (no copy).
template <class Send> void send_in_chunks(Frames& frames, Send send) {
    auto count = std::uint32_t(frames.size());
    for (std::uint32_t i = 0; i < count; ++i) {
        auto whole = std::make_shared<zmq::message_t>(std::move(frames[i]));
        std::size_t size = whole->size(), offset = 0;
        do {
            std::size_t n = std::min(kChunkBytes, size - offset);
            ChunkHeader h{i, count, size, offset};
            Frames piece;
            piece.emplace_back(&kChunkType, 1);
            piece.emplace_back(&h, sizeof h);
            if (n == 0) {
                piece.emplace_back();
            } else {
                auto* keep = new std::shared_ptr<zmq::message_t>(whole);
                piece.emplace_back(
                    static_cast<char*>(whole->data()) + offset, n,
                    [](void*, void* hint) { delete static_cast<std::shared_ptr<zmq::message_t>*>(hint); }, keep);
            }
            send(std::move(piece));
            offset += n;
        } while (offset < size);
    }
}

// Puts pieces back together, per peer (a ROUTER's routing id; "" on a DEALER).
class Gather {
public:
    // True when `frames` holds a whole message to handle: one that was not in pieces, or the last piece's
    // message put together. False when it took a piece. Throws std::runtime_error on a malformed piece
    // (that peer's message in progress is dropped).
    bool whole(const std::string& peer, Frames& frames) {
        if (frames.size() != 3 || frames[0].size() != 1 || *frames[0].data<std::uint8_t>() != kChunkType) {
            partial_.erase(peer); // a message in pieces is never interrupted: what was in progress is lost
            return true;
        }
        try {
            return add(partial_[peer], frames);
        } catch (...) {
            partial_.erase(peer);
            throw;
        }
    }
    // True at most every `period` per peer while pieces arrive: time to count it as alive again.
    bool due(const std::string& peer, std::chrono::steady_clock::duration period) {
        auto it = partial_.find(peer);
        if (it == partial_.end()) return false;
        auto now = std::chrono::steady_clock::now();
        if (now - it->second.last_due < period) return false;
        it->second.last_due = now;
        return true;
    }
    std::size_t in_progress() const { return partial_.size(); }

private:
    struct Partial {
        std::uint32_t frames = 0;
        std::uint64_t filled = 0; // bytes of the last frame so far
        std::uint64_t total = 0;  // bytes of every frame begun (bounded before they are allocated)
        Frames done;
        std::chrono::steady_clock::time_point last_due{};
    };
    [[noreturn]] static void bad(const char* what) { throw std::runtime_error(std::string("malformed piece: ") + what); }

    bool add(Partial& p, Frames& frames) {
        if (frames[1].size() != sizeof(ChunkHeader)) bad("header size");
        ChunkHeader h;
        std::memcpy(&h, frames[1].data(), sizeof h);
        auto& piece = frames[2];
        const std::size_t n = piece.size(); // before the piece may be moved into place
        if (h.frames == 0 || h.frames > kMaxChunkedFrames || h.frame >= h.frames) bad("frame count");
        if (h.frame_size > kMaxChunkedFrame) bad("frame larger than a message may be");
        if (h.offset > h.frame_size || n > h.frame_size - h.offset) bad("piece beyond its frame");
        if (h.frame == 0 && h.offset == 0) p = Partial{h.frames, 0, 0, {}, p.last_due}; // a new message
        else if (h.frames != p.frames) bad("frame count changed");
        if (h.offset == 0) { // a new frame
            if (h.frame != p.done.size() || (h.frame > 0 && p.filled != p.done.back().size())) bad("out of order");
            if ((p.total += h.frame_size) > kMaxChunkedFrame) bad("message larger than a message may be");
            if (n == h.frame_size) p.done.push_back(std::move(piece)); // in one piece: kept as is
            else {
                p.done.emplace_back(std::size_t(h.frame_size));
                std::memcpy(p.done.back().data(), piece.data(), n);
            }
        } else {
            if (p.done.empty() || h.frame + 1 != p.done.size() || h.offset != p.filled ||
                p.done.back().size() != h.frame_size)
                bad("out of order");
            std::memcpy(static_cast<char*>(p.done.back().data()) + h.offset, piece.data(), n);
        }
        p.filled = h.offset + n;
        if (p.done.size() < p.frames || p.filled < h.frame_size) return false;
        frames = std::move(p.done);
        p = Partial{0, 0, 0, {}, p.last_due};
        return true;
    }

    std::map<std::string, Partial> partial_;
};

} // namespace dynexec::wire
