#include "remote/client.hpp"

#include "common/errors.hpp"
#include "remote/outbox.hpp"

#include <fmt/format.h>

namespace dynexec::remote {

Client::Client(ClientOptions options)
    : options_(std::move(options)), sock_(ctx_, zmq::socket_type::dealer), out_(new Outbox) {
    if (wire::needs_curve(options_.endpoint)) wire::make_curve_client(sock_, options_.server_public_key, options_.client_keys);
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::sndtimeo, 1000); // a head that is gone must not hang us
    sock_.set(zmq::sockopt::sndhwm, 0);
    sock_.set(zmq::sockopt::rcvhwm, 0);
    sock_.connect(options_.endpoint);
    thread_ = std::thread([this] { run(); });
    try {
        request(wire::encode(wire::HelloClient{}), 0);
    } catch (...) {
        stop_ = true;
        thread_.join();
        delete out_;
        throw;
    }
}

Client::~Client() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    delete out_;
}

void Client::run() {
    zmq::pollitem_t items[] = {{sock_.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, out_->fd(), ZMQ_POLLIN, 0}};
    auto last_heard = std::chrono::steady_clock::now();
    auto last_ping = last_heard;
    // A head silent this long (pings unanswered) is gone.
    auto patience = std::chrono::duration<double>(std::clamp(options_.timeout, 2.0, 10.0));
    wire::Gather gather;
    while (!stop_) {
        poll_for(items, 2, std::chrono::milliseconds(50));
        auto now = std::chrono::steady_clock::now();
        if (items[0].revents & ZMQ_POLLIN) last_heard = now;
        // While jobs are out, make sure the head is still there: ping when it has been quiet.
        bool waiting_for_jobs;
        {
            std::lock_guard lk(mu_);
            waiting_for_jobs = !outstanding_.empty();
        }
        if (waiting_for_jobs && now - last_heard > patience / 4 && now - last_ping > patience / 4) {
            auto ping = wire::encode(wire::Type::servers, wire::Request{0, ""});
            send_to(sock_, "", ping);
            last_ping = now;
        }
        if (waiting_for_jobs && now - last_heard > patience) {
            head_lost();
            last_heard = now;
        }
        if (items[1].revents & ZMQ_POLLIN)
            for (auto& item : out_->take()) send_to(sock_, "", item.frames);
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        for (;;) {
            wire::Frames frames;
            if (!zmq::recv_multipart(sock_, std::back_inserter(frames), zmq::recv_flags::dontwait)) break;
            try {
                if (!gather.whole("", frames)) continue; // a piece of a large message (wire/chunks.hpp)
                if (wire::type_of(frames) == wire::Type::reply) {
                    auto r = wire::decode<wire::Reply>(frames);
                    std::lock_guard lk(mu_);
                    if (auto it = waiting_.find(r.id); it != waiting_.end()) {
                        it->second.set_value(std::move(r));
                        waiting_.erase(it);
                    }
                } else if (wire::type_of(frames) == wire::Type::output) {
                    auto m = wire::decode<wire::OutputMsg>(frames);
                    std::lock_guard lk(mu_);
                    for (auto& c : m.chunks) {
                        if (!c.final && output_bytes_ + c.data.size() > kLiveOutputBacklog) continue; // nobody polls
                        output_bytes_ += c.data.size();
                        output_.push_back(std::move(c));
                    }
                    output_cv_.notify_all();
                } else if (wire::type_of(frames) == wire::Type::results) {
                    auto m = wire::decode<wire::Results>(frames);
                    std::lock_guard lk(mu_);
                    for (auto& r : m.results) {
                        if (!outstanding_.erase(r.job_id)) early_.insert(r.job_id); // before submit() returned
                        done_.push_back(std::move(r));
                        ++delivered_;
                    }
                    cv_.notify_all();
                }
            } catch (const std::exception&) {
                // a malformed message from the head: nothing to do but drop it
            }
        }
    }
}

void Client::head_lost() {
    std::lock_guard lk(mu_);
    for (auto& id : outstanding_) {
        Result r;
        r.job_id = id;
        r.status = Status::lost;
        r.error_type = "ServerLostError";
        r.message = fmt::format("the dynexec head at {} stopped answering; job {} may have been lost with it "
                                "(its result may still be in the archive)",
                                options_.endpoint, id);
        done_.push_back(std::move(r));
        ++delivered_;
    }
    outstanding_.clear();
    cv_.notify_all();
}

wire::Reply Client::request(wire::Frames frames, std::uint64_t id) {
    std::future<wire::Reply> answer;
    {
        std::lock_guard lk(mu_);
        answer = waiting_[id].get_future();
    }
    out_->push("", std::move(frames));
    if (answer.wait_for(std::chrono::duration<double>(options_.timeout)) != std::future_status::ready) {
        std::lock_guard lk(mu_);
        waiting_.erase(id);
        throw std::runtime_error(fmt::format(
            "no answer from the dynexec head at {} within {} s: is the cluster running, and does the connection "
            "file hold its current secret? (a connection without it is refused)",
            options_.endpoint, options_.timeout));
    }
    auto r = answer.get();
    if (r.error_type.empty()) return r;
    if (r.error_type == "UnknownServiceError") throw UnknownService(r.message);
    if (r.error_type == "InvalidJobError") throw InvalidJob(r.message);
    if (r.error_type == "ShutDownError") throw ShutDown(r.message);
    if (r.error_type == "ValueError") throw std::invalid_argument(r.message);
    throw std::runtime_error(r.message);
}

JobId Client::submit(const std::string& service, const Params& params, const std::string& owner,
                     const JobOptions& options) {
    auto id = next_id_++;
    auto r = request(wire::encode(wire::Submit{id, service, params, owner, options}), id);
    std::lock_guard lk(mu_);
    if (!early_.erase(r.message)) outstanding_.insert(r.message);
    ++submitted_;
    return r.message;
}

std::vector<JobId> Client::submit_many(const std::string& service, const std::vector<Params>& params,
                                  const std::string& owner, const JobOptions& options) {
    std::vector<JobId> ids;
    ids.reserve(params.size());
    for (auto& p : params) ids.push_back(submit(service, p, owner, options));
    return ids;
}

bool Client::cancel(const JobId& job) {
    auto id = next_id_++;
    return request(wire::encode(wire::Type::cancel, wire::Request{id, job}), id).flag;
}

std::vector<bool> Client::cancel_many(const std::vector<JobId>& ids) {
    std::vector<bool> out;
    for (auto& id : ids) out.push_back(cancel(id));
    return out;
}

bool Client::kill(const JobId& job) {
    auto id = next_id_++;
    return request(wire::encode(wire::Type::kill, wire::Request{id, job}), id).flag;
}

Backlog Client::backlog() {
    auto id = next_id_++;
    return request(wire::encode(wire::Type::backlog, wire::Request{id, ""}), id).backlog;
}

void Client::set_echo(bool on) {
    auto id = next_id_++;
    request(wire::encode(wire::Type::echo, wire::Request{id, on ? "on" : "off"}), id);
}

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

std::string Client::state(const JobId& job) {
    auto id = next_id_++;
    return request(wire::encode(wire::Type::state, wire::Request{id, job}), id).message;
}

std::vector<ServerInfo> Client::servers() {
    auto id = next_id_++;
    return request(wire::encode(wire::Type::servers, wire::Request{id, ""}), id).servers;
}

void Client::shutdown_cluster() {
    auto id = next_id_++;
    request(wire::encode(wire::Type::shutdown, wire::Request{id, ""}), id);
}

std::vector<Result> Client::poll(std::size_t max, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return !done_.empty(); });
    std::vector<Result> out;
    while (!done_.empty() && out.size() < max) {
        out.push_back(std::move(done_.front()));
        done_.pop_front();
    }
    return out;
}

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
        for (auto& id : ids) cancel(id);
    }
    if (wait) {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return outstanding_.empty() || stop_; });
    }
}

} // namespace dynexec::remote
