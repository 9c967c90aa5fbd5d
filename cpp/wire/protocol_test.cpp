#include "wire/protocol.hpp"

#include <gtest/gtest.h>

using namespace dynexec;
using namespace dynexec::wire;

namespace {
Result ok_result_for_test(Value v) {
    Result r;
    r.job_id = "J-bad";
    r.service = "svc";
    r.value = std::move(v);
    return r;
}

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
    auto f = encode(Submit{"me", {{"S-1", "svc", {{"x", std::int64_t{3}}}, {1.5, 2}, {"m.f", "{}", "f(3)", "L", "[]"}}}});
    ASSERT_EQ(type_of(f), Type::submit);
    bool got = visit<Cancel, Submit>(f, [&](auto&& m) {
        using M = std::decay_t<decltype(m)>;
        ASSERT_TRUE((std::is_same_v<M, Submit>));
        if constexpr (std::is_same_v<M, Submit>) {
            ASSERT_EQ(m.jobs.size(), 1u);
            EXPECT_EQ(m.jobs[0].id, "S-1");
            EXPECT_EQ(m.jobs[0].options.retries, 2);
            EXPECT_EQ(m.jobs[0].info.function, "m.f"); // what the job was, for the head's archive
            EXPECT_EQ(m.jobs[0].info.summary, "f(3)");
            EXPECT_EQ(m.jobs[0].info.label, "L");
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

// --- Trust: the findings of the fuzz run (issue 10), each through the real decoders. ---
namespace {

// An array as a malicious peer describes it: the encoder sends whatever header it is given.
Array evil_array(std::string dtype, std::vector<std::int64_t> shape, std::size_t nbytes) {
    auto buf = std::make_shared<std::vector<char>>(nbytes, '\x7f');
    Array a;
    a.dtype = std::move(dtype);
    a.shape = std::move(shape);
    a.data = buf->data();
    a.nbytes = nbytes;
    a.owner = std::shared_ptr<const void>(buf, buf->data());
    return a;
}

std::string refusal(Frames f) {
    try {
        decode_any(f);
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "(accepted)";
}

Frames raw(Type t, std::string body) {
    Frames f;
    f.emplace_back(&t, 1);
    f.emplace_back(body.data(), body.size());
    return f;
}

} // namespace

TEST(Trust, AResultsArrayWithABadHeaderFailsOnlyItsJob) {
    struct Case {
        Array array;
        std::string why;
    };
    std::vector<Case> cases{
        {evil_array("f8", {-1, -1}, 8), "shape entry 0 is negative (-1)"},
        {evil_array("O8", {1}, 8), "dtype 'O8' is not one of f8, f4"},
        {evil_array("U8", {1}, 8), "dtype 'U8' is not one of"},
        {evil_array("f8", {4}, 8), "4 elements of f8 need 32 bytes, its frame has 8"},
        {evil_array("u1", {std::int64_t(1) << 62, std::int64_t(1) << 62}, 0), "overflows"},
        {evil_array("f8", std::vector<std::int64_t>(40, 1), 8), "40 dimensions"},
    };
    for (auto& c : cases) {
        Result bad = ok_result_for_test(c.array);
        Result good = ok_result_for_test(doubles({1, 2}, {2}));
        good.job_id = "J-good";
        auto f = encode(Results{{bad, good}});
        auto m = decode<Results>(f);
        ASSERT_EQ(m.results.size(), 2u);
        auto& r = m.results[0];
        EXPECT_EQ(r.status, Status::error) << c.why;
        EXPECT_EQ(r.error_type, "dynexec.ResultDecodeError");
        EXPECT_TRUE(std::holds_alternative<std::monostate>(r.value));
        EXPECT_NE(r.message.find("malformed results message: field 0.0.2"), std::string::npos) << r.message;
        EXPECT_NE(r.message.find(c.why), std::string::npos) << r.message;
        EXPECT_NE(r.message.find("J-bad"), std::string::npos) << r.message;
        EXPECT_EQ(m.results[1].status, Status::ok); // the batch lives on
        EXPECT_EQ(std::get<Array>(m.results[1].value).view<double>()[1], 2.0);
    }
}

TEST(Trust, AnArrayParameterWithABadHeaderRefusesTheMessage) {
    auto job = std::make_shared<Job>();
    job->id = "J-1";
    job->params.set("a", evil_array("O8", {1}, 8));
    auto what = refusal(encode(JobMsg{job, 1}));
    EXPECT_NE(what.find("malformed job message: field 2.0.1.1: dtype 'O8'"), std::string::npos) << what;
    Submit s{"me", {{"S-1", "svc", {{"a", evil_array("f8", {-1, -1}, 8)}}, {}}}};
    what = refusal(encode(s));
    EXPECT_NE(what.find("malformed submit message: field 1.0.2.0.1.1: shape entry 0 is negative"), std::string::npos) << what;
    // A dtype that is not text at all is not echoed.
    job->params.set("a", evil_array(std::string("\xff\x00\x01", 3), {1}, 8));
    what = refusal(encode(JobMsg{job, 1}));
    EXPECT_NE(what.find("not UTF-8"), std::string::npos) << what;
}

TEST(Trust, ANonUtf8StringIsRefusedNamingItsFieldButNotItsBytes) {
    HelloServer h{kProtocolVersion, "bad\xff" "host", 1, 1, {}};
    auto what = refusal(encode(h));
    EXPECT_EQ(what, "malformed hello_server message: field 1: not UTF-8 (byte 3 of 8)");
    // The finding: a reply listing such a host made servers() raise in every client.
    ServersReply rep{9, {{"server-1", "\xc3\x28", 3, 4.5, {"a"}, {}}}};
    what = refusal(encode(rep));
    EXPECT_EQ(what, "malformed servers_reply message: field 1.0.1: not UTF-8 (byte 0 of 2)");
    // Overlong forms and surrogates too, as Python refuses them.
    for (std::string s : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xe2\x82"})
        EXPECT_NE(refusal(encode(HelloClient{kProtocolVersion, s})).find("not UTF-8"), std::string::npos);
    EXPECT_EQ(refusal(encode(HelloClient{kProtocolVersion, "caf\xc3\xa9 \xf0\x9f\x98\x80"})), "(accepted)");
    // A Result's texts may be any bytes: the receiver escapes them per job (check_texts).
    Result r = ok_result_for_test(std::string("\xff"));
    r.message = "\xfe";
    auto f = encode(Results{{r}});
    EXPECT_EQ(std::get<std::string>(decode<Results>(f).results[0].value), "\xff");
}

TEST(Trust, HugeCountsDeepNestingAndTruncationAreRefusedBeforeAllocating) {
    // An array header claiming 2^32-1 elements in a 5-byte body.
    auto what = refusal(raw(Type::results, std::string("\xdd\xff\xff\xff\xff", 5)));
    EXPECT_NE(what.find("malformed results message: body:"), std::string::npos) << what;
    what = refusal(raw(Type::results, std::string("\x91\xdd\xff\xff\xff\xff", 6)));
    EXPECT_NE(what.find("malformed results message: body:"), std::string::npos) << what;
    what = refusal(raw(Type::submit, std::string("\xdf\xff\xff\xff\xff", 5))); // a map
    EXPECT_NE(what.find("body:"), std::string::npos) << what;
    what = refusal(raw(Type::hello_client, std::string("\x91\xdb\xff\xff\xff\xff", 6))); // a 4 GiB string
    EXPECT_NE(what.find("body:"), std::string::npos) << what;
    what = refusal(raw(Type::results, std::string(1000, '\x91') + "\xc0"));
    EXPECT_NE(what.find("body:"), std::string::npos) << what;
    // Too many parameters for one job.
    Submit s{"me", {{"S-1", "svc", {}, {}}}};
    for (int k = 0; k < 5000; ++k) s.jobs[0].params.set("p" + std::to_string(k), std::int64_t(k));
    what = refusal(encode(s));
    EXPECT_NE(what.find("malformed submit message: field 1.0.2: 5000 parameters, more than 4096"), std::string::npos) << what;
    // Missing fields, wrong types, out-of-range enums and integers, unknown types.
    EXPECT_NE(refusal(raw(Type::welcome, "\x91\x02")).find("field 1: missing"), std::string::npos);
    EXPECT_NE(refusal(raw(Type::welcome, "\x94\x02\x01\x02\x03")).find("welcome message: field 1: expected a string"),
              std::string::npos);
    EXPECT_NE(refusal(raw(Type::stop_job, "\x93\xa1x\x01\x63")).find("field 2: enum value 99 out of range"),
              std::string::npos);
    EXPECT_NE(refusal(raw(Type::hello_server, std::string("\x97\x02\xa1h\x01\xff\x90\x00\xa0", 9))).find("field 3: has the wrong type"),
              std::string::npos); // slots = -1
    EXPECT_NE(refusal(raw(Type(200), "\x90")).find("malformed type-200 message: no such message type"), std::string::npos);
    EXPECT_EQ(refusal(raw(Type::stop, "\x90")), "(accepted)");
    EXPECT_NE(refusal(raw(Type::stop, "")).find("malformed stop message: body:"), std::string::npos);
}
