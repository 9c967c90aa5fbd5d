// Google Benchmark micro-benchmarks of the C++ hot paths a job crosses:
// its ID, the balancer's choice and bookkeeping, the registry lookup, the wire.
//   build/bench/micro_bench [--benchmark_filter=Balancer]
#include "balancer/load_balancer.hpp"
#include "balancer/policies.hpp"
#include "testing/fakes.hpp"
#include "wire/protocol.hpp"

#include <benchmark/benchmark.h>
#include <fmt/format.h>

using namespace dynexec;
using namespace dynexec::testing;

namespace {

void BM_JobId(benchmark::State& state) {
    JobIdGenerator ids;
    for (auto _ : state) benchmark::DoNotOptimize(ids.next());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_JobId);

void BM_PolicyChoose(benchmark::State& state, std::string_view name) {
    auto policy = make_policy(name, 1);
    std::vector<std::string> ids;
    std::vector<Candidate> c;
    for (int i = 0; i < state.range(0); ++i) ids.push_back(fmt::format("server-{}", i));
    for (int i = 0; i < state.range(0); ++i)
        c.push_back({ids[i], ServerStats{std::uint64_t(i), 0.1 * i, 1.0 * i, 0}, std::uint32_t(i % 3), 1, std::size_t(i)});
    for (auto _ : state) benchmark::DoNotOptimize(policy->choose(c));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_PolicyChoose, power_of_two, "power_of_two")->Arg(2)->Arg(16);
BENCHMARK_CAPTURE(BM_PolicyChoose, least_busy_time, "least_busy_time")->Arg(2)->Arg(16);
BENCHMARK_CAPTURE(BM_PolicyChoose, round_robin, "round_robin")->Arg(2)->Arg(16);

void BM_RegistryLookup(benchmark::State& state) {
    FakeClock clock;
    LookupRegistry registry{clock};
    for (int i = 0; i < state.range(0); ++i) registry.join(server_registration(std::make_shared<FakeServer>()), std::chrono::seconds(10));
    for (auto _ : state) benchmark::DoNotOptimize(registry.lookup(Kind::compute_server, "test.echo"));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RegistryLookup)->Arg(2)->Arg(16);

// A job through the balancer: dispatch to one of `range(0)` servers, then its completion. Per job.
void BM_BalancerDispatchComplete(benchmark::State& state) {
    FakeClock clock;
    LookupRegistry registry{clock};
    auto sink = std::make_shared<CollectingSink>();
    auto lb = LoadBalancer::create(registry, sink, {"power_of_two", 3, 1});
    std::vector<std::shared_ptr<FakeServer>> servers;
    for (int i = 0; i < state.range(0); ++i) {
        servers.push_back(std::make_shared<FakeServer>());
        servers.back()->n_slots = 1024; // room for a whole batch
        registry.join(server_registration(servers.back()), std::chrono::hours(1));
    }
    constexpr int kBatch = 1024;
    std::uint64_t seq = 0;
    for (auto _ : state) {
        std::vector<JobPtr> jobs;
        for (int i = 0; i < kBatch; ++i) jobs.push_back(make_job(std::to_string(++seq)));
        lb->dispatch(std::move(jobs));
        for (auto& s : servers) {
            for (std::size_t i = 0; i < s->runs.size(); ++i) s->finish(i);
            s->runs.clear();
        }
        sink->results.clear();
    }
    state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_BalancerDispatchComplete)->Arg(2)->Arg(16);

void BM_WireJobRoundTrip(benchmark::State& state) {
    auto job = make_job("01M8D3ZQGVQ6NBGV-0000000001", "python");
    job->params = Params{{"payload", Pickled{std::string(std::size_t(state.range(0)), 'x')}}};
    wire::JobMsg m{job, 1};
    for (auto _ : state) {
        auto frames = wire::encode(m);
        benchmark::DoNotOptimize(wire::decode<wire::JobMsg>(frames));
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_WireJobRoundTrip)->Arg(64)->Arg(64 << 10);

void BM_WireResultRoundTrip(benchmark::State& state) {
    wire::ResultMsg m;
    m.attempt = 1;
    m.result.job_id = "01M8D3ZQGVQ6NBGV-0000000001";
    m.result.value = Pickled{std::string(std::size_t(state.range(0)), 'x')};
    for (auto _ : state) {
        auto frames = wire::encode(m);
        benchmark::DoNotOptimize(wire::decode<wire::ResultMsg>(frames));
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_WireResultRoundTrip)->Arg(64)->Arg(256 << 10)->Arg(1 << 20)->Arg(16 << 20);

} // namespace

BENCHMARK_MAIN();
