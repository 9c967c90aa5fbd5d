#include "server/compute_server.hpp"

#include "common/clock.hpp"

#include <fmt/format.h>
#include <tbb/global_control.h>

#include <cxxabi.h>

#include <thread>
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
        Result r;
        r.job_id = job.id;
        r.owner = job.owner;
        r.service = job.service;
        r.server = id_;
        r.submit_time = job.submit_time;
        auto t0 = SteadyClock::instance().now();
        r.start_time = wall_time();
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
        {
            std::lock_guard lk(mu_);
            ++stats_.jobs_done;
            stats_.busy_time += busy;
            stats_.last_completion = r.end_time;
        }
        item.sink->complete(std::move(r), item.attempt);
    }
    // Drop our references before announcing idleness: a waiter may destroy what they point to.
    item = Item{};
    std::lock_guard lk(mu_);
    --stats_.in_flight;
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
