#include "remote/client.hpp"

#include "common/errors.hpp"
#include "common/objects.hpp"
#include "remote/loop.hpp"

#include <fmt/format.h>

namespace dynexec::remote {
namespace {

constexpr std::size_t kBatch = 4096;                          // jobs per Submit message at most
const auto kLostGrace = std::chrono::milliseconds(1500);      // a connection down this long: the head is gone

[[noreturn]] void rethrow(const wire::ErrorReply& e) {
    if (e.error_type == "UnknownServiceError") throw UnknownService(e.message);
    if (e.error_type == "InvalidJobError") throw InvalidJob(e.message);
    if (e.error_type == "ShutDownError") throw ShutDown(e.message);
    if (e.error_type == "ValueError") throw std::invalid_argument(e.message);
    throw std::runtime_error(e.message);
}

} // namespace

Client::Client(ClientOptions options) : options_(std::move(options)), sock_(ctx_, zmq::socket_type::dealer) {
    if (wire::needs_curve(options_.endpoint))
        wire::make_curve_client(sock_, options_.server_public_key, options_.client_keys);
    configure_socket(sock_, std::chrono::milliseconds(0));
    sock_.set(zmq::sockopt::sndtimeo, 1000); // a head that is gone must not hang us
    sock_.connect(options_.endpoint);
    loop_ = std::make_unique<Loop>(sock_, out_, "dynexec client");
    watch_ = std::make_unique<HeadWatch>(SteadyClock::instance(), from_seconds(std::clamp(options_.timeout, 2.0, 10.0)),
                                         kLostGrace);
    loop_->watch_connection([this](Connection c) { // on the loop's thread
        if (c == Connection::refused_key) refused_key_ = true;
        else watch_->connection(c == Connection::up);
    });
    std::future<Answer> welcome;
    {
        std::lock_guard lk(mu_);
        welcome = waiting_[0].get_future();
    }
    loop_->outbox().push("", wire::encode(wire::HelloClient{wire::kProtocolVersion, ""}));
    thread_ = std::thread([this] { run(); });
    auto fail = [&](const std::string& why) {
        stop_ = true;
        thread_.join();
        throw std::runtime_error(why);
    };
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(options_.timeout);
    while (welcome.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
        if (refused_key_)
            fail(fmt::format("the dynexec head at {} refused this client's key: the connection file does not hold "
                             "the cluster's current client secret",
                             options_.endpoint));
        if (std::chrono::steady_clock::now() > deadline)
            fail(fmt::format("no answer from a dynexec head at {} within {} s: is the cluster running there, and is "
                             "the connection file its current one?",
                             options_.endpoint, options_.timeout));
    }
    auto a = welcome.get();
    if (auto* e = std::get_if<wire::ErrorReply>(&a)) {
        stop_ = true;
        thread_.join();
        rethrow(*e);
    }
}

Client::~Client() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
}

void Client::run() {
    auto& watch = *watch_;
    loop_->run(
        stop_, std::chrono::milliseconds(50),
        [&](const std::string&, wire::Frames& frames) {
            watch.heard();
            on_message(frames);
        },
        [&] {
            bool waiting;
            {
                std::lock_guard lk(mu_);
                flush_submits_locked();
                waiting = !outstanding_.empty() || !waiting_.empty();
            }
            if (watch.ping_due(waiting)) loop_->outbox().push("", wire::encode(wire::ServersQuery{0}));
            if (auto why = watch.lost(waiting)) {
                head_lost(*why);
                return lost_.empty() || waiting; // keep the loop only while something could still come
            }
            return true;
        });
}

void Client::on_message(wire::Frames& frames) {
    bool known = wire::visit<wire::Results, wire::ClientOutput, wire::IdsReply, wire::ErrorReply, wire::WelcomeClient,
                             wire::Cancelled, wire::Killed, wire::JobStateReply, wire::BacklogReply, wire::ServersReply,
                             wire::Done, wire::ServicesReply>(frames, [&](auto&& m) {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, wire::Results>) {
            std::lock_guard lk(mu_); // queued before it counts as delivered: shutdown waits for that
            std::vector<Result> ours;
            for (auto& r : m.results)
                if (outstanding_.erase(r.job_id)) ours.push_back(std::move(r)); // one for no job of ours is dropped
            delivered_ += done_.push(std::move(ours));
            cv_.notify_all();
        } else if constexpr (std::is_same_v<M, wire::ClientOutput>) {
            std::lock_guard lk(mu_);
            for (auto& c : m.chunks) {
                if (!c.final && output_bytes_ + c.data.size() > kLiveOutputBacklog) continue; // nobody polls
                output_bytes_ += c.data.size();
                output_.push_back(std::move(c));
            }
            output_cv_.notify_all();
        } else if constexpr (std::is_same_v<M, wire::IdsReply>) {
            std::lock_guard lk(mu_);
            ids_.push_back(m.ids);
            ids_left_ += m.ids.count;
            asked_ids_ = false;
            cv_.notify_all();
        } else if constexpr (std::is_same_v<M, wire::WelcomeClient>) {
            {
                std::lock_guard lk(mu_);
                session_ = m.session;
                for (auto& s : m.services) services_[s.name] = std::make_shared<const ServiceDef>(s);
                ids_.push_back(m.ids);
                ids_left_ += m.ids.count;
            }
            answer(0, std::move(m));
        } else {
            auto request = m.request;
            answer(request, std::move(m));
        }
    });
    if (!known)
        throw std::runtime_error(fmt::format("a {} message is not for a client", wire::type_name(wire::type_of(frames))));
}

void Client::answer(std::uint64_t request, Answer a) {
    std::lock_guard lk(mu_);
    if (auto it = waiting_.find(request); it != waiting_.end()) {
        it->second.set_value(std::move(a));
        waiting_.erase(it);
    }
}

void Client::head_lost(const std::string& why) {
    std::vector<Result> failed;
    std::lock_guard lk(mu_);
    if (lost_.empty())
        lost_ = fmt::format("the dynexec head at {} stopped ({})", options_.endpoint, why);
    for (auto& id : outstanding_) {
        Result r;
        r.job_id = id;
        r.status = Status::lost;
        r.error_type = "ServerLostError";
        r.message = fmt::format("{}; job {} may have been lost with it (its result may still be in the archive)",
                                lost_, id);
        failed.push_back(std::move(r));
    }
    delivered_ += done_.push(std::move(failed));
    outstanding_.clear();
    unsent_.clear();
    for (auto& [id, p] : waiting_) p.set_value(wire::ErrorReply{id, "RuntimeError", lost_});
    waiting_.clear();
    cv_.notify_all();
}

void Client::flush_submits_locked() {
    for (auto& batch : unsent_) loop_->outbox().push("", wire::encode(batch));
    unsent_.clear();
}

void Client::send_locked(wire::Frames frames) {
    flush_submits_locked(); // a cancel never overtakes the submit of its job
    loop_->outbox().push("", std::move(frames));
}

template <class Reply, class Request> Reply Client::request(Request m) {
    m.request = next_request_++;
    std::future<Answer> answer;
    {
        std::lock_guard lk(mu_);
        if (!lost_.empty()) throw std::runtime_error(lost_);
        answer = waiting_[m.request].get_future();
        send_locked(wire::encode(m));
    }
    if (answer.wait_for(std::chrono::duration<double>(options_.timeout)) != std::future_status::ready) {
        std::lock_guard lk(mu_);
        waiting_.erase(m.request);
        throw std::runtime_error(fmt::format("no answer from the dynexec head at {} within {} s to a {} request",
                                             options_.endpoint, options_.timeout, wire::type_name(Request::type)));
    }
    auto a = answer.get();
    if (auto* e = std::get_if<wire::ErrorReply>(&a)) rethrow(*e);
    if (auto* r = std::get_if<Reply>(&a)) return std::move(*r);
    throw std::runtime_error(fmt::format("the dynexec head answered a {} request with another kind of message",
                                         wire::type_name(Request::type)));
}

ServicePtr Client::service(const std::string& name) {
    {
        std::lock_guard lk(mu_);
        if (auto it = services_.find(name); it != services_.end()) return it->second;
    }
    // Maybe offered since the welcome (a plugin, a server that joined): ask once.
    auto r = request<wire::ServicesReply>(wire::ServicesQuery{});
    std::lock_guard lk(mu_);
    for (auto& s : r.services) services_[s.name] = std::make_shared<const ServiceDef>(s);
    if (auto it = services_.find(name); it != services_.end()) return it->second;
    std::vector<std::string> names;
    for (auto& [n, s] : services_) names.push_back(n);
    unknown_service(name, std::move(names));
}

std::vector<JobId> Client::take_ids_locked(std::unique_lock<std::mutex>& lk, std::size_t n) {
    // Ask ahead, so that submits do not wait; a batch larger than one answer asks again as answers come.
    auto ask = [&] {
        if (asked_ids_ || ids_left_ >= n + wire::kIdBlock / 2) return;
        asked_ids_ = true;
        auto want = std::clamp<std::uint64_t>(n - std::min<std::uint64_t>(n, ids_left_), wire::kIdBlock, wire::kMaxIdsAsked);
        send_locked(wire::encode(wire::MoreIds{0, want}));
    };
    ask();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(options_.timeout);
    while (ids_left_ < n && lost_.empty()) {
        if (cv_.wait_until(lk, deadline) == std::cv_status::timeout)
            throw std::runtime_error(fmt::format("the dynexec head at {} gave no job IDs within {} s",
                                                 options_.endpoint, options_.timeout));
        ask();
    }
    if (!lost_.empty()) throw std::runtime_error(lost_);
    std::vector<JobId> ids;
    ids.reserve(n);
    while (ids.size() < n) {
        auto& block = ids_.front();
        ids.push_back(JobIdGenerator::id(session_, block.first++));
        --ids_left_;
        if (--block.count == 0) ids_.pop_front();
    }
    return ids;
}

std::vector<JobId> Client::submit_many(const std::string& service_name, const std::vector<Params>& params,
                                       const std::string& owner, const JobOptions& options,
                                       const std::vector<JobInfoPtr>& infos) {
    if (!infos.empty() && infos.size() != params.size())
        throw InvalidJob(fmt::format("{} job descriptions for {} jobs", infos.size(), params.size()));
    // Checked here, as the head would: a wrong job raises at once, and none of the batch is queued.
    auto def = service(service_name);
    check_options(options);
    std::vector<Params> checked;
    checked.reserve(params.size());
    for (auto& p : params) try {
            checked.push_back(validate_params(*def, p));
        } catch (const InvalidJob& e) {
            if (params.size() == 1) throw;
            throw InvalidJob(fmt::format("job {} of {}: {}", checked.size() + 1, params.size(), e.what()));
        }
    std::unique_lock lk(mu_);
    if (!lost_.empty()) throw std::runtime_error(lost_);
    auto ids = take_ids_locked(lk, checked.size());
    bool wake = unsent_.empty();
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (unsent_.empty() || unsent_.back().owner != owner || unsent_.back().jobs.size() >= kBatch)
            unsent_.push_back(wire::Submit{owner, {}});
        JobInfo info = !infos.empty() && infos[i] ? *infos[i] : JobInfo{};
        unsent_.back().jobs.push_back(
            {ids[i], service_name, objects_sent_locked(std::move(checked[i])), options, std::move(info)});
        outstanding_.insert(ids[i]);
    }
    submitted_ += ids.size();
    if (wake) loop_->outbox().wake(); // the loop sends what gathered meanwhile, as one batch
    return ids;
}

Params Client::objects_sent_locked(Params params) {
    if (object_keys(params).empty()) return params;
    Params out;
    for (auto& [name, v] : params) {
        auto key = object_key(name);
        if (key.empty() || v.index() == 0) {
            out.set(name, v);
            continue;
        }
        bool sent = !sent_.insert(std::string(key)).second;
        out.set(name, sent ? Value{} : v); // the head has it from us: None, filled in there
    }
    return out;
}

void Client::release(const std::vector<std::string>& keys) {
    wire::Release m;
    std::lock_guard lk(mu_);
    for (auto& k : keys)
        if (sent_.erase(k)) m.keys.push_back(k);
    if (!m.keys.empty() && lost_.empty()) send_locked(wire::encode(m)); // after the submits that name them
}

JobId Client::submit(const std::string& service, const Params& params, const std::string& owner,
                     const JobOptions& options, JobInfoPtr info) {
    return submit_many(service, {params}, owner, options, {std::move(info)}).front();
}

std::vector<bool> Client::cancel_many(const std::vector<JobId>& ids) {
    std::vector<bool> out;
    out.reserve(ids.size());
    for (std::size_t at = 0; at < ids.size(); at += 65536) {
        wire::Cancel m;
        m.job_ids.assign(ids.begin() + at, ids.begin() + std::min(ids.size(), at + 65536));
        auto n = m.job_ids.size();
        auto r = request<wire::Cancelled>(std::move(m));
        if (r.cancelled.size() != n) throw std::runtime_error("the dynexec head answered a cancel for other jobs");
        for (auto c : r.cancelled) out.push_back(c != 0);
    }
    return out;
}

bool Client::cancel(const JobId& job) { return cancel_many({job}).front(); }

bool Client::kill(const JobId& job) { return request<wire::Killed>(wire::Kill{0, job}).killed; }

Backlog Client::backlog() { return request<wire::BacklogReply>(wire::BacklogQuery{}).backlog; }

void Client::set_echo(bool on) { request<wire::Done>(wire::WatchOutput{0, on}); }

std::string Client::state(const JobId& job) { return request<wire::JobStateReply>(wire::StateQuery{0, job}).state; }

std::vector<ServerInfo> Client::servers() { return request<wire::ServersReply>(wire::ServersQuery{}).servers; }

void Client::shutdown_cluster() { request<wire::Done>(wire::ShutdownCluster{}); }

std::vector<OutputChunk> Client::poll_output(std::size_t max, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    output_cv_.wait_for(lk, timeout, [&] { return !output_.empty(); });
    std::vector<OutputChunk> out;
    while (!output_.empty() && out.size() < max) {
        output_bytes_ -= output_.front().data.size();
        out.push_back(std::move(output_.front()));
        output_.pop_front();
    }
    return out;
}

std::vector<Result> Client::poll(std::size_t max, std::chrono::milliseconds timeout) { return done_.poll(max, timeout); }
bool Client::expect(const JobId& id) { return done_.expect(id); }
std::optional<Result> Client::await(const JobId& id, std::chrono::milliseconds timeout) {
    return done_.await(id, timeout);
}
void Client::forget(const JobId& id) { done_.forget(id); }

std::uint64_t Client::delivered() const {
    std::lock_guard lk(const_cast<std::mutex&>(mu_));
    return delivered_;
}

void Client::shutdown(bool wait, bool cancel_pending) {
    if (cancel_pending) {
        std::vector<JobId> ids;
        {
            std::lock_guard lk(mu_);
            ids.assign(outstanding_.begin(), outstanding_.end());
        }
        if (!ids.empty()) try {
                cancel_many(ids);
            } catch (const std::runtime_error&) { // the head is gone: its jobs have failed already
            }
    }
    if (wait) {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return outstanding_.empty() || stop_; });
    }
}

} // namespace dynexec::remote
