// Micro-benchmarks of the results archive (Google Benchmark):
//   build/bench/archive_bench [--benchmark_filter=...]
// Archives go to $DYNEXEC_BENCH_DIR (default: the temp directory), so that
// the large-array figures can be compared with dd on the same disk.
#include "archive/results_archive.hpp"
#include "testing/fakes.hpp"

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {
namespace fs = std::filesystem;
using namespace dynexec;

// A fresh directory per benchmark, removed with it.
struct Scratch {
    fs::path dir;
    Scratch() {
        const char* base = std::getenv("DYNEXEC_BENCH_DIR");
        static int n = 0;
        dir = fs::path(base && *base ? base : fs::temp_directory_path().string()) /
              ("dynexec-archive-bench-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
        fs::remove_all(dir);
    }
    ~Scratch() { fs::remove_all(dir); }
};

std::vector<Result> small_batch(JobIdGenerator& ids, std::size_t n) {
    std::vector<Result> batch;
    batch.reserve(n);
    for (std::size_t i = 0; i < n; ++i) batch.push_back(testing::ok_result(ids.next(), std::int64_t(i)));
    return batch;
}

// Group commits of `range(0)` results made by `make`: write (which flushes), as the results manager does.
template <class Make> void write_batches(benchmark::State& state, Make make) {
    Scratch s;
    JobIdGenerator ids;
    ResultsArchive archive(s.dir, ids.session());
    const auto n = static_cast<std::size_t>(state.range(0));
    for (auto _ : state) {
        state.PauseTiming();
        auto batch = make(ids, n);
        state.ResumeTiming();
        archive.write(batch);
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
}

// Small int results.
void BM_WriteSmallInts(benchmark::State& state) { write_batches(state, small_batch); }
BENCHMARK(BM_WriteSmallInts)->Arg(1)->Arg(16)->Arg(1024)->Arg(4096)->UseRealTime();

// Small results as a Python sweep gives them, every column written: an int, a float or a short str value (in
// turn), owner, service, server, times, and what the job was: its function, label and tags (the same for every
// job) and its own arguments (JSON) and summary.
std::vector<Result> described_batch(JobIdGenerator& ids, std::size_t n) {
    std::vector<Result> batch;
    batch.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        Value v = i % 3 == 0 ? Value(std::int64_t(i)) : i % 3 == 1 ? Value(double(i) * 0.5) : Value("r" + std::to_string(i));
        Result r = testing::ok_result(ids.next(), std::move(v));
        r.info = std::make_shared<JobInfo>(JobInfo{"sweep.run", fmt::format(R"({{"args": [0.5, {}], "kwargs": {{}}}})", i),
                                                   fmt::format("run(0.5, {})", i), "sweep-3", R"(["calib"])"});
        batch.push_back(std::move(r));
    }
    return batch;
}

void BM_WriteSmallDescribed(benchmark::State& state) { write_batches(state, described_batch); }
BENCHMARK(BM_WriteSmallDescribed)->Arg(1)->Arg(1024)->Arg(4096)->UseRealTime();

// Small arrays (16 float64 each): every one a typed dataset /values/<job_id>, in batches of range(0).
void BM_WriteSmallArrays(benchmark::State& state) {
    Scratch s;
    JobIdGenerator ids;
    ResultsArchive archive(s.dir, ids.session());
    const auto n = static_cast<std::size_t>(state.range(0));
    auto [array, span] = Array::allocate<double>({16});
    for (std::size_t i = 0; i < span.size(); ++i) span[i] = double(i);
    for (auto _ : state) {
        state.PauseTiming();
        std::vector<Result> batch;
        for (std::size_t i = 0; i < n; ++i) batch.push_back(testing::ok_result(ids.next(), array));
        state.ResumeTiming();
        archive.write(batch);
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_WriteSmallArrays)->Arg(1)->Arg(1024)->UseRealTime();

// One float64 array of range(0) MiB per result, each written (write() flushes, as the results manager needs)
// does), into a file that keeps growing.
void BM_WriteLargeArray(benchmark::State& state) {
    Scratch s;
    JobIdGenerator ids;
    ResultsArchive archive(s.dir, ids.session());
    const std::size_t bytes = static_cast<std::size_t>(state.range(0)) << 20;
    auto [array, span] = Array::allocate<double>({static_cast<std::int64_t>(bytes / sizeof(double))});
    for (std::size_t i = 0; i < span.size(); ++i) span[i] = double(i);
    for (auto _ : state) {
        archive.write({testing::ok_result(ids.next(), array)});
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
}
BENCHMARK(BM_WriteLargeArray)->Arg(16)->Arg(64)->UseRealTime()->Unit(benchmark::kMillisecond);

// What `dd if=/dev/zero of=FILE bs=16M count=32 conv=fdatasync; rm FILE` does, as an archive: a new
// session's file, 32 results of a 16 MiB float64 array (each written and flushed), fdatasync; the
// file is removed outside the timing.
void BM_LikeDdArchive(benchmark::State& state) {
    Scratch s;
    constexpr std::size_t bytes = 16 << 20, count = 32;
    auto [array, span] = Array::allocate<double>({static_cast<std::int64_t>(bytes / sizeof(double))});
    for (std::size_t i = 0; i < span.size(); ++i) span[i] = double(i);
    for (auto _ : state) {
        JobIdGenerator ids;
        {
            ResultsArchive archive(s.dir, ids.session());
            for (std::size_t i = 0; i < count; ++i) {
                archive.write({testing::ok_result(ids.next(), array)});
            }
            int fd = ::open(archive.file().c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0 || ::fdatasync(fd) != 0) state.SkipWithError("fdatasync of the archive failed");
            if (fd >= 0) ::close(fd);
            archive.close();
        }
        state.PauseTiming();
        fs::remove_all(s.dir);
        state.ResumeTiming();
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes * count));
}
BENCHMARK(BM_LikeDdArchive)->Iterations(4)->UseRealTime()->Unit(benchmark::kMillisecond);

// The same with write(2) to a plain file from one 16 MiB buffer: dd in-process, for comparison.
void BM_LikeDdPosix(benchmark::State& state) {
    Scratch s;
    fs::create_directories(s.dir);
    constexpr std::size_t bytes = 16 << 20, count = 32;
    std::vector<char> data(bytes, 0);
    for (auto _ : state) {
        int fd = ::open((s.dir / "plain").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) state.SkipWithError("cannot create the reference file");
        for (std::size_t i = 0; i < count && fd >= 0; ++i)
            if (::write(fd, data.data(), bytes) != static_cast<ssize_t>(bytes)) state.SkipWithError("write failed");
        if (fd >= 0 && ::fdatasync(fd) != 0) state.SkipWithError("fdatasync failed");
        if (fd >= 0) ::close(fd);
        state.PauseTiming();
        fs::remove(s.dir / "plain");
        state.ResumeTiming();
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes * count));
}
BENCHMARK(BM_LikeDdPosix)->Iterations(4)->UseRealTime()->Unit(benchmark::kMillisecond);

// An archive of 100k small results and a few arrays, read back by ID.
struct Filled {
    Scratch s;
    JobIdGenerator ids;
    std::vector<JobId> small, arrays;
    Filled() {
        ResultsArchive archive(s.dir, ids.session());
        for (int b = 0; b < 100; ++b) {
            auto batch = small_batch(ids, 1000);
            for (auto& r : batch) small.push_back(r.job_id);
            archive.write(batch);
        }
        for (int i = 0; i < 8; ++i) {
            auto [a, span] = Array::allocate<double>({256, 256}); // 512 KiB
            std::fill(span.begin(), span.end(), double(i));
            arrays.push_back(ids.next());
            archive.write({testing::ok_result(arrays.back(), a)});
        }
        archive.close();
    }
};

// read_from() of a random one of `ids` (Filled::small or Filled::arrays), a file opened per call.
void BM_ReadFrom(benchmark::State& state, std::vector<JobId> Filled::*ids) {
    Filled f;
    auto& pick = f.*ids;
    std::mt19937 rng(42);
    for (auto _ : state) {
        auto r = ResultsArchive::read_from(f.s.dir, pick[rng() % pick.size()]);
        if (!r) state.SkipWithError("result not found");
        benchmark::DoNotOptimize(r);
    }
}
BENCHMARK_CAPTURE(BM_ReadFrom, Small, &Filled::small)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ReadFrom, Array, &Filled::arrays)->Unit(benchmark::kMicrosecond);

// read() on the open archive, as the results finder does while the session is live.
void BM_ReadLive(benchmark::State& state) {
    Filled f;
    ResultsArchive archive(f.s.dir, f.ids.session());
    std::mt19937 rng(42);
    for (auto _ : state) {
        auto r = archive.read(f.small[rng() % f.small.size()]);
        if (!r) state.SkipWithError("result not found");
        benchmark::DoNotOptimize(r);
    }
}
BENCHMARK(BM_ReadLive)->Unit(benchmark::kMicrosecond);

} // namespace

BENCHMARK_MAIN();
