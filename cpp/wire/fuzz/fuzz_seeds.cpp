// Writes the seed corpus: one real encoded message of each type (in the fuzz frame format) into argv[1],
// and CURVE keys into argv[2].
#include "wire/fuzz/frames.hpp"
#include "wire/security.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>

using namespace dynexec;
using namespace dynexec::wire;

namespace {

Array doubles(std::vector<std::int64_t> shape) {
    auto [a, span] = Array::allocate<double>(std::move(shape));
    for (std::size_t k = 0; k < span.size(); ++k) span[k] = double(k);
    return a;
}

Params params() {
    return {{"none", std::monostate{}}, {"b", true},           {"i", std::int64_t(-7)},
            {"d", 2.5},                 {"s", std::string("t\xc3\xa9")}, {"bytes", Bytes{std::string("\0\1", 2)}},
            {"pickle", Pickled{"p"}},   {"a", doubles({2, 3})}};
}

Result result(Value v) {
    Result r;
    r.job_id = "S-0000000001";
    r.status = Status::ok;
    r.value = std::move(v);
    r.owner = "me";
    r.service = "svc";
    r.server = "server-1";
    r.captured_stdout = "out";
    return r;
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: fuzz_seeds DECODE_CORPUS_DIR KEY_CORPUS_DIR\n";
        return 2;
    }
    std::filesystem::path dir = argv[1], keys = argv[2];
    std::filesystem::create_directories(dir);
    std::filesystem::create_directories(keys);
    int n = 0;
    auto put = [&](const Frames& f) { std::ofstream(dir / ("seed-" + std::to_string(++n)), std::ios::binary) << fuzz::join(f); };

    ServiceDef def{"svc", "doc", {{"x", ValueType::real, Value{1.5}, "an x"}, {"a", ValueType::array, {}, ""}}, {}};
    const std::string id = "S-0000000001";
    put(encode(HelloServer{kProtocolVersion, "host", 42, 2, {def}, 7, "killed by signal 9"}));
    put(encode(Offer{{def}}));
    put(encode(Welcome{kProtocolVersion, "server-1", 2, 0.5}));
    put(encode(Refused{"no"}));
    put(encode(Renew{{5, 1.5, 2.5, 1}}));
    auto job = std::make_shared<Job>();
    job->id = id;
    job->service = "svc";
    job->params = params();
    put(encode(JobMsg{job, 1}));
    put(encode(ResultMsg{result(doubles({4})), 1}));
    put(encode(ResultMsg{result(Pickled{std::string(200 * 1024 / 4, 'p')}), 1}));
    put(encode(Started{id, 1}));
    put(encode(Revoke{id, 2}));
    put(encode(Revoked{id, 1, true}));
    put(encode(StopJob{id, 1, Status::timeout}));
    put(encode(Leaving{"bye"}));
    put(encode(LoadPlugin{"/x.so"}));
    put(encode(Echo{true}));
    put(encode(Forget{{"0123456789abcdef0123456789abcdef"}}));
    put(encode(Release{{"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"}}));
    put(encode(HelloClient{kProtocolVersion, "me"}));
    put(encode(Submit{"me", {{id, "svc", params(), {1.5, 2}, {"mod.fn", R"({"args": [1]})", "fn(1)", "label", R"(["t"])"}}}}));
    put(encode(Cancel{3, {id, id}}));
    put(encode(Kill{3, id}));
    put(encode(StateQuery{3, id}));
    put(encode(BacklogQuery{3}));
    put(encode(ServersQuery{3}));
    put(encode(ShutdownCluster{3}));
    put(encode(WatchOutput{3, true}));
    put(encode(MoreIds{3, 100}));
    put(encode(ServicesQuery{3}));
    put(encode(WelcomeClient{kProtocolVersion, "S", {def}, {1, 100}}));
    put(encode(Cancelled{3, {1, 0}}));
    put(encode(Killed{3, true}));
    put(encode(JobStateReply{3, "running"}));
    put(encode(BacklogReply{3, {1, 2, {{"svc", 3}}}}));
    put(encode(ServersReply{9, {{"server-1", "h", 3, 4.5, {"a", "b"}, {5, 1.0, 2.0, 1}}}}));
    put(encode(Done{3}));
    put(encode(ErrorReply{3, "UnknownServiceError", "nope"}));
    put(encode(IdsReply{3, {5, 10}}));
    put(encode(ServicesReply{3, {def}}));
    put(encode(Results{{result(std::string("v")), result(doubles({1, 2})), result(Bytes{"b"})}}));
    put(encode(OutputMsg{{{id, 1, "partial \xe2\x82", false}, {id, 2, "", true}}}));
    put(encode(ClientOutput{{{id, 1, "out", true}}}));
    put(encode(Expired{}));
    put(encode(Stop{}));
    put(encode(Renewed{}));

    auto k = CurveKeys::generate();
    std::ofstream(keys / "public", std::ios::binary) << k.public_key;
    std::ofstream(keys / "secret", std::ios::binary) << k.secret_key;
    std::cout << n << " decode seeds, 2 key seeds\n";
}
