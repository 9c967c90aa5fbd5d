// Test doubles shared by the component tests: servers and sinks that record.
#pragma once

#include "registry/lookup_registry.hpp"

#include <functional>
#include <mutex>
#include <string_view>
#include <tuple>
#include <vector>

namespace dynexec::testing {

// A compute server that only records what it is given; the test starts and finishes jobs by hand. With
// `remote`, it behaves as one in another process: it keeps its own state of each job, says so with
// started(), and answers revokes later (answer()).
struct FakeServer final : ComputeServerProxy {
    struct Run {
        JobPtr job;
        int attempt;
        std::shared_ptr<CompletionSink> sink;
    };
    std::vector<Run> runs;
    std::vector<std::pair<JobId, int>> revoked;
    std::vector<std::tuple<JobId, int, Status>> stopped;
    ServerStats s;
    unsigned n_slots = 1; // read by a balancer when it first sees this server: set it before joining
    bool remote = false;
    // Called at the end of each run(), revoke() (after the revoke itself) and stop(), and in stats() and
    // slots() (with no job), with the call's name: a test records the calls in order, or calls back into
    // the balancer from inside one.
    std::function<void(std::string_view what, const JobPtr& job, int attempt)> on_call;

    void run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) override {
        runs.push_back({job, attempt, std::move(sink)});
        if (on_call) on_call("run", job, attempt);
    }
    ServerStats stats() const override {
        if (on_call) on_call("stats", nullptr, 0);
        return s;
    }
    unsigned slots() const override {
        if (on_call) on_call("slots", nullptr, 0);
        return n_slots;
    }
    std::optional<bool> revoke(const JobPtr& job, int attempt) override {
        revoked.emplace_back(job->id, attempt);
        std::optional<bool> answer;
        if (!remote) answer = job->try_revoke(attempt);
        if (on_call) on_call("revoke", job, attempt);
        return answer;
    }
    void stop(const JobId& id, int attempt, Status why) override {
        stopped.emplace_back(id, attempt, why);
        if (on_call)
            for (auto& r : runs)
                if (r.job->id == id && r.attempt == attempt) return on_call("stop", r.job, attempt);
    }
    bool shares_jobs() const override { return !remote; }

    // Starts the i-th job given to it (for a remote one: the balancer's copy hears of the start).
    bool start(std::size_t i) {
        auto& r = runs.at(i);
        return r.job->try_start(r.attempt);
    }
    // A remote server's answer to the revoke of the i-th job it was given.
    void answer(std::size_t i, bool ok) {
        auto& r = runs.at(i);
        r.sink->revoked(r.job->id, r.attempt, ok);
    }

    // Starts and finishes the i-th job given to this server, as a real server would.
    // `run_seconds` >= 0 stamps the result with start and end times that far apart.
    bool finish(std::size_t i, Value v = 1.0, double run_seconds = -1) {
        auto& r = runs.at(i);
        bool running_here = r.job->state() == JobState::running && r.job->attempt() == r.attempt; // start()ed
        if (!running_here && !r.job->try_start(r.attempt)) return false;
        Result res;
        res.job_id = r.job->id;
        res.value = std::move(v);
        if (run_seconds >= 0) {
            res.start_time = 1000.0;
            res.end_time = 1000.0 + run_seconds;
        }
        r.sink->complete(std::move(res), r.attempt);
        return true;
    }
};

struct CollectingSink final : ResultsSink {
    std::mutex mu;
    std::vector<Result> results;
    void accept(Result r) override {
        std::lock_guard lk(mu);
        results.push_back(std::move(r));
    }
};

inline ServicePtr test_service(std::string name = "test.echo") {
    return std::make_shared<const ServiceDef>(ServiceDef{
        std::move(name), "returns x", {{"x", ValueType::real, Value{0.0}, ""}}, [](const Params& p) -> Value {
            return p.get<double>("x");
        }});
}

inline Registration server_registration(std::shared_ptr<ComputeServerProxy> server,
                                        std::vector<ServicePtr> services = {test_service()}) {
    Registration r;
    r.kind = Kind::compute_server;
    r.host = "localhost";
    r.services = std::move(services);
    r.server = std::move(server);
    return r;
}

// A successful result with every field filled in, as a compute server reports it.
inline Result ok_result(const JobId& id, Value v) {
    Result r;
    r.job_id = id;
    r.value = std::move(v);
    r.owner = "alice";
    r.service = "python";
    r.server = "server-1";
    r.submit_time = 1700000000.25;
    r.start_time = 1700000001.5;
    r.end_time = 1700000002.75;
    r.attempts = 1;
    return r;
}

inline JobPtr make_job(std::string id, std::string service = "test.echo") {
    auto j = std::make_shared<Job>();
    j->id = std::move(id);
    j->service = std::move(service);
    j->params.set("x", 1.0);
    return j;
}

} // namespace dynexec::testing
