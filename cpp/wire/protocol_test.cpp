#include "wire/protocol.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using namespace dynexec::wire;

namespace {
Array doubles(std::vector<double> v, std::vector<std::int64_t> shape) {
    auto [a, span] = Array::allocate<double>(std::move(shape));
    std::copy(v.begin(), v.end(), span.begin());
    return a;
}
} // namespace

TEST(Protocol, JobRoundTripKeepsEveryValueKindAndSendsArraysAsFrames) {
    auto job = std::make_shared<Job>();
    job->id = "J-1";
    job->service = "svc";
    job->owner = "me";
    job->submit_time = 12.5;
    job->params.set("none", std::monostate{});
    job->params.set("b", true);
    job->params.set("i", std::int64_t{-7});
    job->params.set("d", 2.5);
    job->params.set("s", std::string("text"));
    job->params.set("bytes", Bytes{std::string("\0\1\2", 3)});
    job->params.set("pickle", Pickled{"p"});
    job->params.set("a", doubles({1, 2, 3, 4, 5, 6}, {2, 3}));
    auto frames = encode(JobMsg{job, 3});
    ASSERT_EQ(type_of(frames), Type::job);
    ASSERT_EQ(frames.size(), 3u); // type, body, one array frame
    EXPECT_EQ(frames[2].size(), 6 * sizeof(double));

    auto m = decode<JobMsg>(frames);
    EXPECT_EQ(m.attempt, 3);
    EXPECT_EQ(m.job->attempt(), 3);
    EXPECT_TRUE(m.job->try_start(3));
    EXPECT_EQ(m.job->id, "J-1");
    EXPECT_EQ(m.job->submit_time, 12.5);
    auto& p = m.job->params;
    EXPECT_TRUE(std::holds_alternative<std::monostate>(*p.find("none")));
    EXPECT_EQ(p.get<bool>("b"), true);
    EXPECT_EQ(p.get<std::int64_t>("i"), -7);
    EXPECT_EQ(p.get<double>("d"), 2.5);
    EXPECT_EQ(p.get<std::string>("s"), "text");
    EXPECT_EQ(p.get<Bytes>("bytes").data, std::string("\0\1\2", 3));
    EXPECT_EQ(p.get<Pickled>("pickle").data, "p");
    auto& a = p.get<Array>("a");
    EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(a.view<double>()[5], 6.0);
}

TEST(Protocol, LargeBytesAndPicklesTravelInFramesOfTheirOwn) {
    std::string big(200 * 1024, 'x');
    big[12345] = '\0';
    ResultMsg m;
    m.result.job_id = "J-2";
    m.result.value = Pickled{big};
    auto frames = encode(m);
    ASSERT_EQ(frames.size(), 3u); // type, body, the pickle
    EXPECT_LT(frames[1].size(), 1024u);
    EXPECT_EQ(std::get<Pickled>(decode<ResultMsg>(frames).result.value).data, big);

    auto job = std::make_shared<Job>();
    job->id = "J-3";
    job->params.set("small", Bytes{"s"});
    job->params.set("large", Bytes{big});
    auto jf = encode(JobMsg{job, 1});
    ASSERT_EQ(jf.size(), 3u);
    auto back = decode<JobMsg>(jf);
    EXPECT_EQ(back.job->params.get<Bytes>("large").data, big);
    EXPECT_EQ(back.job->params.get<Bytes>("small").data, "s");
    jf.pop_back(); // its frame lost on the way: refused, not read out of bounds
    EXPECT_THROW(decode<JobMsg>(jf), std::exception);
}

TEST(Protocol, ResultsRepliesAndServiceSignaturesRoundTrip) {
    Result r;
    r.job_id = "J-2";
    r.status = Status::error;
    r.error_type = "ValueError";
    r.message = "bad";
    r.traceback = "tb";
    r.server = "server-1";
    r.start_time = 1;
    r.end_time = 2;
    r.attempts = 2;
    r.value = doubles({7}, {1});
    auto f = encode(Results{{r, r}});
    auto back = decode<Results>(f);
    ASSERT_EQ(back.results.size(), 2u);
    EXPECT_EQ(back.results[1].status, Status::error);
    EXPECT_EQ(back.results[1].traceback, "tb");
    EXPECT_EQ(std::get<Array>(back.results[0].value).view<double>()[0], 7.0);

    HelloServer h{kProtocolVersion,
                  "host",
                  42,
                  2,
                  {{"svc", "doc", {{"x", ValueType::real, Value{1.5}, "an x"}, {"y", ValueType::array, {}, ""}}, {}}}};
    auto hf = encode(h);
    auto hb = decode<HelloServer>(hf);
    ASSERT_EQ(hb.services.size(), 1u);
    EXPECT_EQ(hb.services[0].params[0].type, ValueType::real);
    EXPECT_EQ(std::get<double>(*hb.services[0].params[0].default_value), 1.5);
    EXPECT_FALSE(hb.services[0].params[1].default_value);

    ServersReply rep{9, {{"server-1", "h", 3, 4.5, {"a", "b"}, {5, 1.0, 2.0, 1}}}};
    auto rf = encode(rep);
    ASSERT_EQ(type_of(rf), Type::servers_reply);
    auto rb = decode<ServersReply>(rf);
    EXPECT_EQ(rb.request, 9u);
    EXPECT_EQ(rb.servers.at(0).services, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(rb.servers.at(0).stats.jobs_done, 5u);
}

TEST(Protocol, MalformedMessagesAreRefusedWithAReason) {
    Frames empty;
    EXPECT_THROW(type_of(empty), std::runtime_error);
    auto f = encode(Welcome{kProtocolVersion, "server-1", 2, 0.5});
    Frames body_only;
    body_only.emplace_back(std::string("\x10"));
    EXPECT_THROW(decode<Welcome>(body_only), std::runtime_error);
    Frames garbage;
    garbage.emplace_back(std::string("\x10"));
    garbage.emplace_back(std::string("\xc1\xc1\xc1"));
    EXPECT_THROW(decode<Welcome>(garbage), std::runtime_error);
    // A job whose array frame is missing.
    auto job = std::make_shared<Job>();
    job->params.set("a", doubles({1, 2}, {2}));
    auto jf = encode(JobMsg{job, 1});
    jf.pop_back();
    try {
        decode<JobMsg>(jf);
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("array frame missing"), std::string::npos);
    }
    EXPECT_EQ(decode<Welcome>(f).id, "server-1");
}

TEST(Protocol, EachMessageKindHasItsOwnTypeAndVisitPicksIt) {
    auto f = encode(Submit{"me", {{"S-1", "svc", {{"x", std::int64_t{3}}}, {1.5, 2}}}});
    ASSERT_EQ(type_of(f), Type::submit);
    bool got = visit<Cancel, Submit>(f, [&](auto&& m) {
        using M = std::decay_t<decltype(m)>;
        ASSERT_TRUE((std::is_same_v<M, Submit>));
        if constexpr (std::is_same_v<M, Submit>) {
            ASSERT_EQ(m.jobs.size(), 1u);
            EXPECT_EQ(m.jobs[0].id, "S-1");
            EXPECT_EQ(m.jobs[0].options.retries, 2);
            EXPECT_EQ(std::get<std::int64_t>(*m.jobs[0].params.find("x")), 3);
        }
    });
    EXPECT_TRUE(got);
    auto c = encode(Cancelled{4, {1, 0, 1}});
    EXPECT_FALSE(visit<Submit>(c, [](auto&&) {})); // not one of those asked for
    EXPECT_EQ(decode<Cancelled>(c).cancelled, (std::vector<std::uint8_t>{1, 0, 1}));
    EXPECT_STREQ(type_name(Type::more_ids), "more_ids");
    EXPECT_STREQ(type_name(Type(200)), "unknown");
    auto w = encode(WelcomeClient{kProtocolVersion, "SESSION", {}, {17, 64}});
    auto wb = decode<WelcomeClient>(w);
    EXPECT_EQ(wb.ids.first, 17u);
    EXPECT_EQ(wb.ids.count, 64u);
    EXPECT_NO_THROW(decode_any(w));
}
