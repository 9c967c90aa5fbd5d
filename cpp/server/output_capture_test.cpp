#include "server/compute_server.hpp"
#include "server/output_capture.hpp"
#include "wire/protocol.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <future>
#include <iostream>

using namespace dynexec;

TEST(OutputCapture, InvalidUtf8BecomesReplacementCharacters) {
    EXPECT_EQ(valid_utf8("plain \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), "plain \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    EXPECT_EQ(valid_utf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
    EXPECT_EQ(valid_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");      // overlong
    EXPECT_EQ(valid_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"); // a surrogate
    EXPECT_EQ(valid_utf8("end\xE2\x82"), "end\xEF\xBF\xBD\xEF\xBF\xBD");  // cut inside a sequence
}

TEST(OutputCapture, KeepsEachStreamUpToItsLimitAndSaysHowMuchWasDropped) {
    std::vector<std::string> live;
    JobOutput out("job-1", 8, [&](const JobId& id, int stream, std::string_view data, bool final) {
        live.push_back(id + ":" + std::to_string(stream) + ":" + std::string(data) + (final ? ":final" : ""));
    });
    out.write(1, "12345");
    out.write(2, "err");
    out.write(1, "67890");
    Result r;
    out.finish(r);
    out.write(1, "late"); // a thread the job left behind: not this job's any more
    EXPECT_EQ(r.captured_stdout.substr(0, 8), "12345678");
    EXPECT_NE(r.captured_stdout.find("2 more bytes of stdout dropped"), std::string::npos) << r.captured_stdout;
    EXPECT_EQ(r.captured_stderr, "err");
    // Live output is not capped: echo shows everything, in order, then the final chunk.
    EXPECT_EQ(live, (std::vector<std::string>{"job-1:1:12345", "job-1:2:err", "job-1:1:67890", "job-1:0::final"}));
}

TEST(OutputCapture, AJobsOutputIsCurrentOnlyOnItsThreadAndOnlyWhileItRuns) {
    OutputCapture capture({true, false, 1024, {}});
    EXPECT_EQ(JobOutput::current(), nullptr);
    Result r;
    {
        OutputCapture::Job job(&capture, "job-1");
        ASSERT_NE(JobOutput::current(), nullptr);
        JobOutput::current()->write(1, "mine");
        std::thread([] { EXPECT_EQ(JobOutput::current(), nullptr); }).join();
        job.finish(r);
        EXPECT_EQ(JobOutput::current(), nullptr);
    }
    EXPECT_EQ(r.captured_stdout, "mine");
    OutputCapture::Job none(nullptr, "job-2"); // a server that does not capture
    EXPECT_EQ(JobOutput::current(), nullptr);
}

// Redirects this test process's fd 1/2 for the length of one job, then restores them.
TEST(OutputCapture, FileDescriptorsOneAndTwoAreCapturedAroundAJobAndRestored) {
    OutputCapture capture({true, true, 1 << 20, {}});
    Result r;
    {
        OutputCapture::Job job(&capture, "job-1");
        std::printf("printf %d\n", 42); // buffered by stdio: flushed into the job's output at its end
        std::cout << "cout" << std::endl;
        ASSERT_EQ(::write(2, "fd2\n", 4), 4);
        std::string big(200 * 1024, 'x'); // more than a pipe holds: the drainer empties it meanwhile
        ASSERT_EQ(::write(1, big.data(), big.size()), ssize_t(big.size()));
        job.finish(r);
    }
    EXPECT_EQ(r.captured_stdout.substr(0, 15), "printf 42\ncout\n");
    EXPECT_EQ(r.captured_stdout.size(), 15 + 200 * 1024);
    EXPECT_EQ(r.captured_stderr, "fd2\n");
    // fd 1 is the test's own again: a second job captures only its own output.
    Result r2;
    {
        OutputCapture::Job job(&capture, "job-2");
        ASSERT_EQ(::write(1, "two\n", 4), 4);
        job.finish(r2);
    }
    EXPECT_EQ(r2.captured_stdout, "two\n");
}

TEST(OutputCapture, AServerThatCapturesPutsAFailingJobsOutputInItsResult) {
    ServiceCatalog catalog;
    catalog.add({"test.fail", "", {}, [](const Params&) -> Value {
                     JobOutput::current()->write(2, "about to fail\n");
                     throw std::runtime_error("boom");
                 }});
    struct Sink final : CompletionSink {
        std::promise<Result> result;
        void complete(Result r, int) override { result.set_value(std::move(r)); }
    };
    auto sink = std::make_shared<Sink>();
    auto done = sink->result.get_future();
    ComputeServer server({1, 1, {true, false, 1024, {}}}, catalog);
    auto job = std::make_shared<Job>();
    job->id = "job-1";
    job->service = "test.fail";
    server.run(job, 0, sink);
    ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    auto r = done.get();
    EXPECT_EQ(r.status, Status::error);
    EXPECT_EQ(r.message, "boom");
    EXPECT_EQ(r.captured_stderr, "about to fail\n");
}

TEST(OutputCapture, BatcherSendsByTimeSizeOrAtAJobsEnd) {
    OutputBatcher b(10, std::chrono::milliseconds(100));
    TimePoint t0(std::chrono::seconds(1));
    EXPECT_FALSE(b.add("a", 1, "12", false, t0));
    EXPECT_FALSE(b.add("a", 1, "34", false, t0 + std::chrono::milliseconds(10))); // appended to the last chunk
    EXPECT_FALSE(b.due(t0 + std::chrono::milliseconds(99)));
    EXPECT_TRUE(b.due(t0 + std::chrono::milliseconds(100)));
    auto chunks = b.take();
    ASSERT_EQ(chunks.size(), 1u);
    EXPECT_EQ(chunks[0].data, "1234");
    EXPECT_TRUE(b.add("a", 2, "0123456789", false, t0)); // size
    b.take();
    EXPECT_FALSE(b.add("a", 1, "x", false, t0));
    EXPECT_TRUE(b.add("a", 0, "", true, t0)); // the job ended: at once, ahead of its result
    chunks = b.take();
    ASSERT_EQ(chunks.size(), 2u);
    EXPECT_TRUE(chunks[1].final);
    EXPECT_TRUE(b.empty());
}

TEST(OutputCapture, OutputChunksTravelAsBytes) {
    wire::OutputMsg m;
    m.chunks.push_back({"job-1", 1, std::string("a\xFF\0b", 4), false});
    m.chunks.push_back({"job-1", 0, "", true});
    auto frames = wire::encode(m);
    EXPECT_EQ(wire::type_of(frames), wire::Type::output);
    auto back = wire::decode<wire::OutputMsg>(frames);
    ASSERT_EQ(back.chunks.size(), 2u);
    EXPECT_EQ(back.chunks[0].job_id, "job-1");
    EXPECT_EQ(back.chunks[0].stream, 1);
    EXPECT_EQ(back.chunks[0].data, std::string("a\xFF\0b", 4));
    EXPECT_FALSE(back.chunks[0].final);
    EXPECT_TRUE(back.chunks[1].final);
}
