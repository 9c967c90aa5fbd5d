#include "server/compute_server.hpp"

#include "common/clock.hpp"

#include <fmt/format.h>
#include <tbb/global_control.h>

#include <cxxabi.h>

#include <thread>
#include <tuple>
#include <typeinfo>

namespace dynexec {
namespace {

std::string demangled(const std::type_info& t) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(t.name(), nullptr, nullptr, &status), std::free);
    return status == 0 ? name.get() : t.name();
}

unsigned cores() { return std::max(1u, std::thread::hardware_concurrency()); }

// oneTBB starts cores-1 workers, counting on the main thread to join in; our jobs
// are enqueued, so only workers run them. Keep enough workers for every slot of
// every server in the process (jobs may block: sleep, I/O, the GIL), at least one per core.
void reserve_workers(unsigned slots) {
    static std::mutex mu;
    static unsigned reserved = 0;
    static std::unique_ptr<tbb::global_control> control;
    std::lock_guard lk(mu);
    reserved += slots;
    std::size_t want = std::max(reserved, cores()) + 1;
    if (!control || control->active_value(tbb::global_control::max_allowed_parallelism) < want) {
        control.reset(); // the smallest of the live limits applies: keep only one
        control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, want);
    }
}

} // namespace

ComputeServer::ComputeServer(Options options, const ServiceCatalog& catalog)
    : options_(options), catalog_(catalog),
      arena_(int(std::max(options.threads ? options.threads : cores(), options.slots)), /*reserved_for_masters=*/0) {
    if (options_.slots == 0) throw std::invalid_argument("a compute server needs at least one slot");
    reserve_workers(options_.slots);
    if (options_.capture.enabled) capture_ = std::make_unique<OutputCapture>(options_.capture);
}

ComputeServer::~ComputeServer() { wait_idle(); }

void ComputeServer::set_id(std::string id) { id_ = std::move(id); }

void ComputeServer::run(JobPtr job, int attempt, std::shared_ptr<CompletionSink> sink) {
    bool start_pump = false;
    {
        std::lock_guard lk(mu_);
        ++stats_.in_flight;
        queue_.push({std::move(job), attempt, std::move(sink)});
        // At most `slots` pumps drain the queue; start one if a slot is free.
        if (pumps_ < options_.slots) start_pump = ++pumps_;
    }
    if (start_pump) arena_.enqueue([this] { pump(); });
}

void ComputeServer::pump() {
    for (;;) {
        Item item;
        while (queue_.try_pop(item)) execute(item);
        std::lock_guard lk(mu_);
        if (!queue_.empty()) continue; // a push raced with our last pop
        if (--pumps_ == 0 && stats_.in_flight == 0) idle_.notify_all();
        return; // once mu_ is released the server may be destroyed: touch nothing
    }
}

void ComputeServer::execute(Item& item) {
    auto& job = *item.job;
    bool started = job.try_start(item.attempt);
    if (started) {
        item.sink->started(job.id, item.attempt);
        Result r = result_of(job);
        auto t0 = SteadyClock::instance().now();
        r.start_time = wall_time();
        {
            std::lock_guard lk(mu_);
            running_[&job] = {item.job, item.attempt, item.sink, t0, {}, r.start_time};
        }
        job.params.watch_stop(&job.stop_requested);
        OutputCapture::Job output(capture_.get(), job.id);
        try {
            auto def = catalog_.find(job.service);
            if (!def) throw ServiceError("UnknownService", fmt::format("server {} does not offer '{}'", id_, job.service));
            r.value = def->fn(job.params);
        } catch (const ServiceError& e) {
            r.status = Status::error;
            r.error_type = e.type;
            r.message = e.what();
            r.traceback = e.traceback;
            r.value = e.payload;
        } catch (const std::exception& e) {
            r.status = Status::error;
            r.error_type = demangled(typeid(e));
            r.message = e.what();
        } catch (...) {
            r.status = Status::error;
            r.error_type = "unknown";
            r.message = "the service threw something that is not a std::exception";
        }
        output.finish(r);
        r.end_time = wall_time();
        double busy = seconds(SteadyClock::instance().now() - t0);
        bool send = true;
        {
            std::lock_guard lk(mu_);
            auto it = running_.find(&job);
            if (it->second.given_up) {
                send = false; // its stopped result went already
                --given_up_running_;
            } else if (it->second.stop != Status::ok) { // it returned once asked to stop: what it made is partial
                auto stopped = stopped_result(it->second);
                stopped.end_time = r.end_time;
                stopped.captured_stdout = std::move(r.captured_stdout); // what it printed is kept
                stopped.captured_stderr = std::move(r.captured_stderr);
                r = std::move(stopped);
            }
            running_.erase(it);
            ++stats_.jobs_done;
            stats_.busy_time += busy;
            stats_.last_completion = r.end_time;
        }
        if (send) item.sink->complete(std::move(r), item.attempt);
    }
    // Drop our references before announcing idleness: a waiter may destroy what they point to.
    item = Item{};
    std::lock_guard lk(mu_);
    --stats_.in_flight;
}

Result ComputeServer::result_of(const Job& job) const {
    Result r;
    r.job_id = job.id;
    r.owner = job.owner;
    r.service = job.service;
    r.server = id_;
    r.submit_time = job.submit_time;
    return r;
}

Result ComputeServer::stopped_result(const Running& run) const {
    auto& job = *run.job;
    Result r = result_of(job);
    r.start_time = run.start_wall;
    r.end_time = wall_time();
    r.status = run.stop;
    double ran = r.end_time - r.start_time;
    if (run.stop == Status::timeout) {
        r.error_type = "JobTimeoutError";
        r.message = fmt::format("job {} ({}) ran past its time limit of {:g} s and was stopped after {:.1f} s", job.id,
                                job.service, job.time_limit, ran);
    } else {
        r.error_type = "JobKilledError";
        r.message = fmt::format("job {} ({}) was killed after running {:.1f} s", job.id, job.service, ran);
    }
    return r;
}

std::optional<Result> ComputeServer::stop_locked(Running& run, Status why, TimePoint now) {
    if (run.given_up) return std::nullopt;
    if (run.stop == Status::ok) {
        run.stop = why;
        run.stop_asked = now;
        run.job->stop_requested = true;
    }
    // A Python job cannot be asked; a native service gets stop_grace seconds to notice stop_requested().
    if (run.job->service != "python" && options_.stop_grace > 0) return std::nullopt;
    run.given_up = true;
    ++given_up_running_;
    return stopped_result(run);
}

void ComputeServer::stop(const JobId& id, int attempt, Status why) {
    std::optional<Result> now;
    std::shared_ptr<CompletionSink> sink;
    {
        std::lock_guard lk(mu_);
        for (auto& [job, run] : running_)
            if (run.job->id == id && run.attempt == attempt) {
                now = stop_locked(run, why, SteadyClock::instance().now());
                sink = run.sink;
                break;
            }
    }
    if (now) sink->complete(std::move(*now), attempt);
}

std::size_t ComputeServer::enforce() {
    std::vector<std::tuple<std::shared_ptr<CompletionSink>, Result, int>> send;
    std::size_t still_running;
    {
        std::lock_guard lk(mu_);
        auto now = SteadyClock::instance().now();
        for (auto& [job, run] : running_) {
            if (run.given_up) continue;
            std::optional<Result> r;
            if (run.stop == Status::ok) {
                if (run.job->time_limit > 0 && seconds(now - run.started) > run.job->time_limit)
                    r = stop_locked(run, Status::timeout, now);
            } else if (seconds(now - run.stop_asked) >= options_.stop_grace) {
                run.given_up = true;
                ++given_up_running_;
                r = stopped_result(run);
            }
            if (r) send.emplace_back(run.sink, std::move(*r), run.attempt);
        }
        still_running = given_up_running_;
    }
    for (auto& [sink, r, attempt] : send) sink->complete(std::move(r), attempt);
    return still_running;
}

ServerStats ComputeServer::stats() const {
    std::lock_guard lk(mu_);
    return stats_;
}

void ComputeServer::wait_idle() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [this] { return stats_.in_flight == 0 && pumps_ == 0; });
}

} // namespace dynexec
