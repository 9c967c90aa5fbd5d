// The engine in one process, driven from C++: what the hot paths cost without
// Python. Prints a table, or one JSON object with --json (read by compare.py).
//   native_cpp   jobs/s of the "noop" service, archive off and every result archived
//   backlog      memory per job queued while no server is registered; drain rate once servers join
//   elasticity   from a server's registration to its first job, under a backlog
#include "common/clock.hpp"
#include "engine/engine.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

using namespace dynexec;
using json = nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Bytes the allocator has handed out: unlike RSS, not hidden by memory freed earlier and kept by malloc.
std::size_t heap_bytes() {
    auto m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

// Submits `n` noop jobs in batches of `batch`.
void submit(Engine& e, std::size_t n, std::size_t batch) {
    std::vector<Params> params(batch, Params{{"x", Value{1.0}}});
    for (std::size_t sent = 0; sent < n; sent += batch) {
        params.resize(std::min(batch, n - sent), Params{{"x", Value{1.0}}});
        e.submit_many("noop", params, "bench");
    }
}

// Returns once `n` results have come back; throws after `timeout_s` or on a failed job.
template <class OnResult> void wait_results(Engine& e, std::size_t n, double timeout_s, OnResult&& on_result) {
    std::size_t got = 0;
    double deadline = now() + timeout_s;
    while (got < n) {
        if (now() > deadline) throw std::runtime_error(fmt::format("only {} of {} results after {} s", got, n, timeout_s));
        for (auto& r : e.poll(65536, 100ms)) {
            if (r.status != Status::ok) throw std::runtime_error(fmt::format("job {} failed: {}", r.job_id, r.message));
            on_result(r);
            ++got;
        }
    }
}

EngineOptions options(int servers, std::optional<fs::path> archive) {
    EngineOptions o;
    o.servers = servers;
    o.archive = std::move(archive);
    o.seed = 1;
    return o;
}

json native(std::size_t n, int workers, const fs::path& tmp, const std::string& which) {
    json out{{"jobs", n}, {"servers", workers}, {"service", "noop(x=1.0)"}, {"batch", 10000}};
    for (bool archived : {false, true}) {
        if (which != "both" && (which == "on") != archived) continue;
        std::optional<fs::path> dir;
        if (archived) dir = tmp / "native-archive";
        Engine e(options(workers, dir));
        submit(e, 10000, 10000); // warm-up: threads, allocator, the archive file
        wait_results(e, 10000, 60, [](const Result&) {});
        double t0 = now();
        submit(e, n, 10000);
        double t_submit = now() - t0;
        wait_results(e, n, 600, [](const Result&) {});
        double dt = now() - t0;
        auto key = archived ? "archive_on" : "archive_off";
        out[fmt::format("jobs_per_s_{}", key)] = double(n) / dt;
        out[fmt::format("submit_jobs_per_s_{}", key)] = double(n) / t_submit;
        e.shutdown(true, false);
    }
    return out;
}

// Jobs queued with no server, then servers join: memory per queued job, drain rate, first-job latency.
json backlog(std::size_t n, int workers) {
    Engine e(options(0, std::nullopt));
    auto heap0 = heap_bytes();
    double t0 = now();
    submit(e, n, 10000);
    double t_submit = now() - t0;
    auto heap1 = heap_bytes();
    double joined_wall = wall_time();
    double t1 = now();
    std::vector<std::string> ids;
    for (int i = 0; i < workers; ++i) ids.push_back(e.add_server());
    double first_start = 0;
    wait_results(e, n, 600, [&](const Result& r) {
        if (r.server == ids.front() && (first_start == 0 || r.start_time < first_start)) first_start = r.start_time;
    });
    double drain = now() - t1;
    return {{"jobs", n},
            {"bytes_per_job", double(heap1 - heap0) / double(n)},
            {"submit_jobs_per_s", double(n) / t_submit},
            {"drain_seconds", drain},
            {"drain_jobs_per_s", double(n) / drain},
            {"first_job_ms", first_start ? json((first_start - joined_wall) * 1e3) : json()}};
}

// A server added while another has a backlog: time from its registration to its first job's start.
json new_server(std::size_t n) {
    Engine e(options(1, std::nullopt));
    std::vector<Params> params(n, Params{{"seconds", Value{0.002}}});
    e.submit_many("spin.cpu", params, "bench");
    std::this_thread::sleep_for(50ms); // the first server is busy, the rest wait in the balancer
    double joined_wall = wall_time();
    auto id = e.add_server();
    double first_start = 0;
    std::size_t on_new = 0;
    wait_results(e, n, 120, [&](const Result& r) {
        if (r.server != id) return;
        ++on_new;
        if (first_start == 0 || r.start_time < first_start) first_start = r.start_time;
    });
    return {{"jobs", n}, {"job_ms", 2.0}, {"first_job_ms", (first_start - joined_wall) * 1e3}, {"jobs_on_new_server", on_new}};
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"dynexec in one process, from C++: native jobs/s, backlog memory and drain, a new server's first job"};
    bool as_json = false;
    std::size_t jobs = 1'000'000, backlog_jobs = 1'000'000, new_server_jobs = 500;
    int workers = 2;
    std::string archive = "both";
    app.add_flag("--json", as_json, "print one JSON object instead of a table");
    app.add_option("--jobs", jobs, "noop jobs per native run")->capture_default_str();
    app.add_option("--backlog", backlog_jobs, "jobs queued before any server registers")->capture_default_str();
    app.add_option("--new-server-jobs", new_server_jobs, "2 ms jobs in the new-server run")->capture_default_str();
    app.add_option("--workers", workers, "compute servers")->capture_default_str();
    app.add_option("--archive", archive, "native runs: archive off, on or both")
        ->check(CLI::IsMember({"off", "on", "both"}))
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    auto tmp = fs::temp_directory_path() / fmt::format("dynexec-native-bench-{}", getpid());
    fs::create_directories(tmp);
    json doc;
    try {
        doc["native_cpp"] = native(jobs, workers, tmp, archive);
        doc["backlog"] = backlog(backlog_jobs, workers);
        doc["elasticity_new_server"] = new_server(new_server_jobs);
    } catch (const std::exception& e) {
        fs::remove_all(tmp);
        fmt::print(stderr, "dynexec_native_bench: {}\n", e.what());
        return 1;
    }
    fs::remove_all(tmp);
    if (as_json) {
        fmt::print("{}\n", doc.dump(1));
        return 0;
    }
    auto& n = doc["native_cpp"];
    auto& b = doc["backlog"];
    fmt::print("native noop, {} servers in one process, {} jobs:\n", workers, jobs);
    if (n.contains("jobs_per_s_archive_off"))
        fmt::print("  archive off  {:>12.0f} jobs/s   (target 1,000,000)\n", n["jobs_per_s_archive_off"].get<double>());
    if (n.contains("jobs_per_s_archive_on"))
        fmt::print("  archive on   {:>12.0f} jobs/s   (target 200,000)\n", n["jobs_per_s_archive_on"].get<double>());
    fmt::print("backlog of {} jobs, no server:\n", backlog_jobs);
    fmt::print("  memory       {:>12.0f} bytes/job (target <= 1024)\n", b["bytes_per_job"].get<double>());
    fmt::print("  drain        {:>12.0f} jobs/s once {} servers joined\n", b["drain_jobs_per_s"].get<double>(), workers);
    fmt::print("new server under a backlog of 2 ms jobs:\n");
    fmt::print("  first job    {:>12.2f} ms after it registered (target <= 10)\n",
               doc["elasticity_new_server"]["first_job_ms"].get<double>());
    return 0;
}
