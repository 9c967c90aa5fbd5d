// The hub's client side: what remote clients send, and the results and output of their jobs.
#include "remote/hub.hpp"

#include "common/errors.hpp"
#include "common/utf8.hpp"

#include <fmt/format.h>

namespace dynexec::remote {
namespace {

std::vector<ServiceDef> signatures(const std::vector<ServicePtr>& services) {
    std::vector<ServiceDef> out;
    for (auto& s : services) out.push_back({s->name, s->doc, s->params, {}});
    return out;
}

// A job description from a client goes into the archive's UTF-8 texts: refused (empty: fine) if a text is
// not UTF-8, holds a NUL or is longer than the archive keeps.
std::string bad_info(const JobInfo& info) {
    constexpr std::size_t kMaxText = 64 * 1024;
    const std::pair<const char*, const std::string*> texts[] = {{"function", &info.function}, {"args", &info.args},
                                                                {"summary", &info.summary}, {"label", &info.label},
                                                                {"tags", &info.tags}};
    for (auto [name, text] : texts) {
        if (text->size() > kMaxText) return fmt::format("its {} has {} bytes, over {}", name, text->size(), kMaxText);
        if (text->find('\0') != std::string::npos) return fmt::format("its {} holds a NUL character", name);
        if (invalid_utf8_at(*text) != std::string_view::npos) return fmt::format("its {} is not UTF-8", name);
    }
    return {};
}

} // namespace

ClientSide::ClientSide(Outbox& out, const HubHooks& hooks, ObjectStore& objects)
    : out_(out), hooks_(hooks), objects_(objects) {}

void ClientSide::handle(const std::string& from, wire::Frames& frames) {
    bool known = wire::visit<wire::HelloClient, wire::Submit, wire::Cancel, wire::Kill, wire::StateQuery,
                             wire::BacklogQuery, wire::ServersQuery, wire::ShutdownCluster, wire::WatchOutput,
                             wire::MoreIds, wire::ServicesQuery, wire::Release>(frames, [&](auto&& m) { on(from, std::move(m)); });
    if (!known) throw std::runtime_error(fmt::format("unknown message type {}", int(wire::type_of(frames))));
}

void ClientSide::error(const std::string& to, std::uint64_t request, const std::exception& e) {
    auto type = dynamic_cast<const UnknownService*>(&e)          ? "UnknownServiceError"
                : dynamic_cast<const InvalidJob*>(&e)            ? "InvalidJobError"
                : dynamic_cast<const ShutDown*>(&e)              ? "ShutDownError"
                : dynamic_cast<const std::invalid_argument*>(&e) ? "ValueError"
                                                                 : "RuntimeError";
    out_.push(to, wire::encode(wire::ErrorReply{request, type, e.what()}));
}

wire::IdBlock ClientSide::reserve_locked(const std::string& client, std::uint64_t n) {
    n = std::clamp<std::uint64_t>(n, 1, wire::kMaxIdsAsked); // a client asks again for more
    wire::IdBlock block{hooks_.reserve_ids(n), n};
    auto& c = clients_[client];
    if (c.blocks.empty()) c.next = block.first;
    c.blocks.push_back(block);
    return block;
}

bool ClientSide::take_id_locked(const std::string& client, const JobId& id) {
    auto it = clients_.find(client);
    if (it == clients_.end()) return false;
    std::uint64_t seq;
    try {
        if (JobIdGenerator::session_of(id) != hooks_.session) return false;
        seq = JobIdGenerator::sequence_of(id);
    } catch (const InvalidJob&) {
        return false;
    }
    auto& c = it->second;
    // A client uses its IDs in order: one past its current block moves it to the next (the rest is never used).
    while (!c.blocks.empty() && seq >= c.blocks.front().first + c.blocks.front().count) {
        c.blocks.pop_front();
        if (!c.blocks.empty()) c.next = c.blocks.front().first;
    }
    if (c.blocks.empty() || seq < c.next) return false;
    c.next = seq + 1;
    return true;
}

void ClientSide::on(const std::string& from, wire::HelloClient&& m) {
    // A hello again from the same peer: a client anew, holding nothing.
    if (auto dropped = objects_.release_all(from); !dropped.empty() && on_dropped) on_dropped(dropped);
    if (m.version != wire::kProtocolVersion) {
        out_.push(from, wire::encode(wire::ErrorReply{
                            0, "ValueError",
                            fmt::format("this dynexec head speaks protocol version {}, the client version {}: use the "
                                        "same dynexec on both sides",
                                        wire::kProtocolVersion, m.version)}));
        return;
    }
    wire::WelcomeClient w;
    w.session = hooks_.session;
    w.services = signatures(hooks_.services());
    {
        std::lock_guard lk(mu_);
        clients_[from]; // a client that says hello twice keeps what it had
        w.ids = reserve_locked(from, wire::kIdBlock);
    }
    out_.push(from, wire::encode(w));
}

void ClientSide::on(const std::string& from, wire::Submit&& m) {
    std::vector<Result> refused;
    std::vector<wire::SubmitJob> accepted;
    accepted.reserve(m.jobs.size());
    {
        std::lock_guard lk(mu_);
        for (auto& job : m.jobs) {
            std::string bad = bad_info(job.info);
            if (bad.empty() && take_id_locked(from, job.id)) {
                Result r;
                if (objects_of(from, job, r)) accepted.push_back(std::move(job));
                else refused.push_back(std::move(r));
                continue;
            }
            Result r;
            r.job_id = job.id;
            r.status = Status::error;
            r.error_type = "InvalidJobError";
            r.message = !bad.empty() ? fmt::format("job {}: its description is refused: {}", job.id.substr(0, 64), bad)
                                     : fmt::format("job ID '{}' was not given to this client by this head, or was used already",
                                                   job.id.substr(0, 64));
            refused.push_back(std::move(r));
        }
    }
    if (!accepted.empty()) {
        auto more = hooks_.submit(std::move(accepted), m.owner.empty() ? "remote" : m.owner, [&](const JobId& id) {
            std::lock_guard lk(mu_); // before the job can run: its result goes back to this client
            client_of_[id] = from;
        });
        for (auto& r : more) refused.push_back(std::move(r));
    }
    if (!refused.empty()) out_.push(from, wire::encode(wire::Results{std::move(refused)}));
}

bool ClientSide::objects_of(const std::string& from, wire::SubmitJob& job, Result& refused) {
    if (object_keys(job.params).empty()) return true; // most jobs: their parameters are not copied
    Params filled;
    bool changed = false;
    for (auto& [name, v] : job.params) {
        auto key = object_key(name);
        if (key.empty() || !valid_object_key(key)) { // validate_params names a bad key
            filled.set(name, v);
            continue;
        }
        std::string k(key);
        if (v.index() != 0) {
            objects_.hold(from, k, v);
            filled.set(name, v);
        } else if (auto data = objects_.find(from, k)) {
            filled.set(name, std::move(*data));
            changed = true;
        } else {
            refused.job_id = job.id;
            refused.service = job.service;
            refused.status = Status::error;
            refused.error_type = "InvalidJobError";
            refused.message = fmt::format("job {} names object {} as sent before, but this client holds no such "
                                          "object at the head (released, or sent to another head)", job.id, k);
            return false;
        }
    }
    if (changed) job.params = std::move(filled);
    return true;
}

void ClientSide::on(const std::string& from, wire::Release&& m) {
    auto dropped = objects_.release(from, m.keys);
    if (!dropped.empty() && on_dropped) on_dropped(dropped);
}

void ClientSide::on(const std::string& from, wire::Cancel&& m) {
    // A job queued on a remote server is cancelled once that server confirms, through this very thread:
    // the answer goes when the last one comes.
    struct Pending {
        std::mutex mu;
        wire::Cancelled reply;
        std::size_t left;
    };
    auto n = m.job_ids.size();
    auto pending = std::make_shared<Pending>();
    pending->reply.request = m.request;
    pending->reply.cancelled.assign(n, 0);
    pending->left = n;
    if (n == 0) return out_.push(from, wire::encode(pending->reply));
    for (std::size_t i = 0; i < n; ++i)
        hooks_.cancel(m.job_ids[i], [this, from, pending, i](bool ok) {
            std::lock_guard lk(pending->mu);
            pending->reply.cancelled[i] = ok;
            if (--pending->left == 0) out_.push(from, wire::encode(pending->reply));
        });
}

void ClientSide::on(const std::string& from, wire::Kill&& m) {
    out_.push(from, wire::encode(wire::Killed{m.request, hooks_.kill(m.job_id, Status::killed)}));
}

void ClientSide::on(const std::string& from, wire::StateQuery&& m) {
    wire::JobStateReply r{m.request, ""};
    if (auto st = hooks_.state(m.job_id)) r.state = *st == JobState::running ? "running" : "queued";
    out_.push(from, wire::encode(r));
}

void ClientSide::on(const std::string& from, wire::BacklogQuery&& m) {
    out_.push(from, wire::encode(wire::BacklogReply{m.request, hooks_.backlog()}));
}

void ClientSide::on(const std::string& from, wire::ServersQuery&& m) {
    out_.push(from, wire::encode(wire::ServersReply{m.request, hooks_.servers()}));
}

void ClientSide::on(const std::string& from, wire::ShutdownCluster&& m) {
    out_.push(from, wire::encode(wire::Done{m.request}));
    std::thread(hooks_.shutdown).detach(); // it stops this very thread
}

void ClientSide::on(const std::string& from, wire::WatchOutput&& m) {
    bool changed = false, any = false;
    {
        std::lock_guard lk(mu_);
        auto& c = clients_[from];
        if (c.watching != m.on) {
            c.watching = m.on;
            watching_ += m.on ? 1 : -1;
            changed = watching_ == (m.on ? 1u : 0u);
        }
        any = watching_ > 0;
    }
    if (changed && on_watching) on_watching(any); // servers send output for every job while anyone wants some
    out_.push(from, wire::encode(wire::Done{m.request}));
}

void ClientSide::on(const std::string& from, wire::MoreIds&& m) {
    wire::IdsReply r{m.request, {}};
    {
        std::lock_guard lk(mu_);
        if (!clients_.count(from)) return error(from, m.request, std::invalid_argument("no hello from this client"));
        r.ids = reserve_locked(from, m.count);
    }
    out_.push(from, wire::encode(r));
}

void ClientSide::on(const std::string& from, wire::ServicesQuery&& m) {
    out_.push(from, wire::encode(wire::ServicesReply{m.request, signatures(hooks_.services())}));
}

void ClientSide::route(std::vector<Result>& batch) {
    std::map<std::string, wire::Results> to_clients;
    {
        std::lock_guard lk(mu_);
        if (client_of_.empty()) return;
        std::vector<Result> local;
        for (auto& r : batch) {
            auto it = client_of_.find(r.job_id);
            if (it == client_of_.end()) {
                local.push_back(std::move(r));
                continue;
            }
            to_clients[it->second].results.push_back(std::move(r));
            client_of_.erase(it);
        }
        batch.swap(local);
    }
    for (auto& [client, results] : to_clients) out_.push(client, wire::encode(results));
}

std::vector<OutputChunk> ClientSide::route_output(std::vector<OutputChunk>&& chunks) {
    std::map<std::string, wire::ClientOutput> to_clients;
    std::vector<OutputChunk> rest;
    {
        std::lock_guard lk(mu_);
        for (auto& c : chunks) {
            auto it = client_of_.find(c.job_id);
            if (it == client_of_.end()) {
                rest.push_back(std::move(c));
                continue;
            }
            auto cl = clients_.find(it->second);
            if (cl != clients_.end() && cl->second.watching) to_clients[it->second].chunks.push_back(std::move(c));
        }
    }
    for (auto& [client, msg] : to_clients) out_.push(client, wire::encode(msg));
    return rest;
}

} // namespace dynexec::remote
