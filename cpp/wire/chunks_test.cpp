#include "remote/outbox.hpp"
#include "wire/chunks.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using namespace dynexec::wire;

namespace {
// A message whose bytes frame is `n` long, through send_to on a DEALER and back through a Gather on a ROUTER.
Frames through_a_socket(const std::string& big, std::size_t* pieces) {
    zmq::context_t ctx;
    zmq::socket_t router(ctx, zmq::socket_type::router), dealer(ctx, zmq::socket_type::dealer);
    router.bind("inproc://chunks");
    dealer.connect("inproc://chunks");
    Result r;
    r.job_id = "J-1";
    r.value = Pickled{big};
    auto frames = encode(ResultMsg{r, 2});
    remote::send_to(dealer, "", frames);
    auto small = encode(Renewed{});
    remote::send_to(dealer, "", small); // after the large one: it arrives after it, whole
    Gather g;
    *pieces = 0;
    for (;;) {
        Frames in;
        EXPECT_TRUE(zmq::recv_multipart(router, std::back_inserter(in)));
        auto from = in[0].to_string();
        in.erase(in.begin());
        if (g.whole(from, in)) {
            Frames next;
            EXPECT_TRUE(zmq::recv_multipart(router, std::back_inserter(next)));
            next.erase(next.begin());
            EXPECT_TRUE(g.whole(from, next));
            EXPECT_EQ(type_of(next), Type::renewed);
            return in;
        }
        ++*pieces;
    }
}
} // namespace

TEST(Chunks, ALargeMessageTravelsInPiecesAndIsPutBackTogether) {
    std::string big(5 * kChunkBytes + 123, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = char(i * 31 + 7);
    std::size_t pieces = 0;
    auto frames = through_a_socket(big, &pieces);
    EXPECT_GE(pieces, 6u); // type and body, then the value's 6 pieces, the last of which completes it
    ASSERT_EQ(type_of(frames), Type::result);
    auto m = decode<ResultMsg>(frames);
    EXPECT_EQ(m.attempt, 2);
    EXPECT_EQ(std::get<Pickled>(m.result.value).data, big);
}

TEST(Chunks, ASmallMessageIsNotCut) {
    std::size_t pieces = 0;
    auto frames = through_a_socket(std::string(kChunkBytes, 'x'), &pieces);
    EXPECT_EQ(pieces, 0u);
    EXPECT_EQ(std::get<Pickled>(decode<ResultMsg>(frames).result.value).data, std::string(kChunkBytes, 'x'));
}

TEST(Chunks, AMalformedPieceIsRefusedWithoutTouchingMemory) {
    Gather g;
    ChunkHeader h{0, 1, 10, 8}; // a piece of 4 bytes at offset 8 of a 10-byte frame
    Frames f;
    f.emplace_back(&kChunkType, 1);
    f.emplace_back(&h, sizeof h);
    f.emplace_back("abcd", 4);
    EXPECT_THROW(g.whole("p", f), std::runtime_error);
    h = ChunkHeader{0, 1, kMaxChunkedFrame + 1, 0};
    Frames g2;
    g2.emplace_back(&kChunkType, 1);
    g2.emplace_back(&h, sizeof h);
    g2.emplace_back("abcd", 4);
    EXPECT_THROW(g.whole("p", g2), std::runtime_error);
    h = ChunkHeader{1, 2, 4, 4}; // a continuation with no start
    Frames g3;
    g3.emplace_back(&kChunkType, 1);
    g3.emplace_back(&h, sizeof h);
    g3.emplace_back("abcd", 4);
    EXPECT_THROW(g.whole("p", g3), std::runtime_error);
    EXPECT_EQ(g.in_progress(), 0u);
}
