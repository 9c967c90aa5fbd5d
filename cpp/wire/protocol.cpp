#include "wire/protocol.hpp"

#include "common/objects.hpp"
#include "wire/limits.hpp"

#include "common/utf8.hpp"

#define MSGPACK_NO_BOOST
#include <msgpack.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace dynexec::wire {
namespace {

std::string message_name(const Frames& frames) {
    if (frames.empty() || frames[0].size() != 1) return "untyped";
    auto t = *frames[0].data<std::uint8_t>();
    std::string name = type_name(Type(t));
    return name != "unknown" ? name : fmt::format("type-{}", t);
}

[[noreturn]] void malformed(const std::string& message, const std::string& what) {
    throw std::runtime_error(fmt::format("malformed {} message: {}", message, what));
}

// --- Checks of what a peer sent, kept apart from the encoding so that changes to either merge easily. ---

// A dtype for an error message: it came from a peer, so only short printable ASCII is shown.
std::string shown(std::string_view s) {
    bool printable = s.size() <= 16 && std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    return printable ? fmt::format("'{}'", s) : fmt::format("of {} bytes", s.size());
}

// What is wrong with an array header from a peer, given the size of its data frame; empty if nothing.
std::string array_problem(const Array& a, std::size_t frame_bytes) {
    if (!supported_dtype(a.dtype)) {
        std::string ok;
        for (auto d : kArrayDtypes) ok += (ok.empty() ? "" : ", ") + std::string(d);
        return fmt::format("dtype {} is not one of {}", shown(a.dtype), ok);
    }
    if (a.shape.size() > kMaxArrayDims)
        return fmt::format("{} dimensions, more than {}", a.shape.size(), kMaxArrayDims);
    std::size_t n = 1;
    for (std::size_t k = 0; k < a.shape.size(); ++k) {
        if (a.shape[k] < 0) return fmt::format("shape entry {} is negative ({})", k, a.shape[k]);
        if (__builtin_mul_overflow(n, std::size_t(a.shape[k]), &n)) return "the shape's product overflows";
    }
    std::size_t bytes = 0;
    if (__builtin_mul_overflow(n, a.itemsize(), &bytes)) return "the shape's size in bytes overflows";
    if (bytes != frame_bytes)
        return fmt::format("{} elements of {} need {} bytes, its frame has {}", n, a.dtype, bytes, frame_bytes);
    return {};
}

// msgpack allocates for a container before it reads its elements: each element takes at least one byte of
// the body (a map entry two), so no count may pass the body's size, nor any string.
msgpack::unpack_limit limits_for(std::size_t body_bytes) {
    auto cap = [&](std::size_t limit, std::size_t per) { return std::min(limit, body_bytes / per); };
    return msgpack::unpack_limit(cap(kMaxCount, 1), cap(kMaxCount, 2), cap(kMaxStringBytes, 1),
                                 cap(kMaxStringBytes, 1), cap(kMaxStringBytes, 1), kMaxDepth);
}

// Each message and nested struct lists its fields once; Out packs them, In reads them back.
template <class IO> void fields(IO& io, ServerStats& s) {
    io(s.jobs_done, s.busy_time, s.last_completion, s.in_flight);
}
template <class IO> void fields(IO& io, Result& r) {
    io(r.job_id, r.status, r.value, r.error_type, r.message, r.traceback, r.owner, r.service, r.server, r.submit_time,
       r.start_time, r.end_time, r.attempts, r.location, r.captured_stdout, r.captured_stderr);
}
template <class IO> void fields(IO& io, ParamSpec& p) { io(p.name, p.type, p.default_value, p.doc); }
template <class IO> void fields(IO& io, ServiceDef& d) { io(d.name, d.doc, d.params); }
template <class IO> void fields(IO& io, ServerInfo& s) { io(s.id, s.host, s.pid, s.lease_expiry, s.services, s.stats); }
template <class IO> void fields(IO& io, HelloServer& m) {
    io(m.version, m.host, m.pid, m.slots, m.services, m.replaces_pid, m.replaced_because);
}
template <class IO> void fields(IO& io, Offer& m) { io(m.services); }
template <class IO> void fields(IO& io, Renew& m) { io(m.stats); }
template <class IO> void fields(IO& io, ResultMsg& m) { io(m.result, m.attempt); }
template <class IO> void fields(IO& io, Started& m) { io(m.job_id, m.attempt); }
template <class IO> void fields(IO& io, Revoked& m) { io(m.job_id, m.attempt, m.ok); }
template <class IO> void fields(IO& io, Leaving& m) { io(m.reason); }
template <class IO> void fields(IO& io, Welcome& m) { io(m.version, m.id, m.lease_seconds, m.renew_seconds); }
template <class IO> void fields(IO& io, Refused& m) { io(m.reason); }
template <class IO> void fields(IO& io, Expired&) { io(); }
template <class IO> void fields(IO& io, Stop&) { io(); }
template <class IO> void fields(IO& io, Renewed&) { io(); }
template <class IO> void fields(IO& io, LoadPlugin& m) { io(m.path); }
template <class IO> void fields(IO& io, Revoke& m) { io(m.job_id, m.attempt); }
template <class IO> void fields(IO& io, StopJob& m) { io(m.job_id, m.attempt, m.why); }
template <class IO> void fields(IO& io, Echo& m) { io(m.on); }
template <class IO> void fields(IO& io, Forget& m) { io(m.keys); }
template <class IO> void fields(IO& io, Release& m) { io(m.keys); }
template <class IO> void fields(IO& io, HelloClient& m) { io(m.version, m.owner); }
template <class IO> void fields(IO& io, JobOptions& o) { io(o.time_limit, o.retries); }
template <class IO> void fields(IO& io, JobInfo& i) { io(i.function, i.args, i.summary, i.label, i.tags); }
template <class IO> void fields(IO& io, SubmitJob& m) { io(m.id, m.service, m.params, m.options, m.info); }
template <class IO> void fields(IO& io, Submit& m) { io(m.owner, m.jobs); }
template <class IO> void fields(IO& io, Cancel& m) { io(m.request, m.job_ids); }
template <class IO> void fields(IO& io, Kill& m) { io(m.request, m.job_id); }
template <class IO> void fields(IO& io, StateQuery& m) { io(m.request, m.job_id); }
template <class IO> void fields(IO& io, BacklogQuery& m) { io(m.request); }
template <class IO> void fields(IO& io, ServersQuery& m) { io(m.request); }
template <class IO> void fields(IO& io, ShutdownCluster& m) { io(m.request); }
template <class IO> void fields(IO& io, WatchOutput& m) { io(m.request, m.on); }
template <class IO> void fields(IO& io, MoreIds& m) { io(m.request, m.count); }
template <class IO> void fields(IO& io, ServicesQuery& m) { io(m.request); }
template <class IO> void fields(IO& io, IdBlock& m) { io(m.first, m.count); }
template <class IO> void fields(IO& io, WelcomeClient& m) { io(m.version, m.session, m.services, m.ids); }
template <class IO> void fields(IO& io, Results& m) { io(m.results); }
template <class IO> void fields(IO& io, Cancelled& m) { io(m.request, m.cancelled); }
template <class IO> void fields(IO& io, Killed& m) { io(m.request, m.killed); }
template <class IO> void fields(IO& io, JobStateReply& m) { io(m.request, m.state); }
template <class IO> void fields(IO& io, ServiceCount& c) { io(c.service, c.jobs); }
template <class IO> void fields(IO& io, Backlog& b) { io(b.running, b.queued, b.waiting); }
template <class IO> void fields(IO& io, BacklogReply& m) { io(m.request, m.backlog); }
template <class IO> void fields(IO& io, ServersReply& m) { io(m.request, m.servers); }
template <class IO> void fields(IO& io, Done& m) { io(m.request); }
template <class IO> void fields(IO& io, ErrorReply& m) { io(m.request, m.error_type, m.message); }
template <class IO> void fields(IO& io, IdsReply& m) { io(m.request, m.ids); }
template <class IO> void fields(IO& io, ServicesReply& m) { io(m.request, m.services); }

template <class T>
concept Record = requires(T& t, int& io) {
    fields(io, t);
};

// Bytes and pickles from this size on travel in frames of their own, like arrays.
constexpr std::size_t kOwnFrame = 128 * 1024;

// Packs fields in order; arrays (and large bytes) go to their own frames.
struct Out {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk{buf};
    Frames arrays;
    std::shared_ptr<const void> keep; // when set, it owns the values packed: large bytes are borrowed, not copied

    template <class... T> void operator()(const T&... xs) {
        pk.pack_array(std::uint32_t(sizeof...(xs)));
        (put(xs), ...);
    }
    template <class T>
    requires std::is_arithmetic_v<T>
    void put(T v) { pk.pack(v); }
    template <class T>
    requires std::is_enum_v<T>
    void put(T v) { pk.pack(int(v)); }
    void put(const std::string& s) { pk.pack(s); }
    void bin(const std::string& s) {
        pk.pack_bin(std::uint32_t(s.size()));
        pk.pack_bin_body(s.data(), std::uint32_t(s.size()));
    }
    template <class T> void put(const std::vector<T>& v) {
        pk.pack_array(std::uint32_t(v.size()));
        for (auto& x : v) put(x);
    }
    template <Record T> void put(const T& r) { fields(*this, const_cast<T&>(r)); }
    void put(const std::optional<Value>& v) {
        pk.pack_array(2);
        pk.pack(v.has_value());
        put(v ? *v : Value{});
    }
    void put(const Value& v) {
        pk.pack_array(2);
        pk.pack(int(v.index()));
        std::visit(
            [&](auto&& x) {
                using T = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<T, std::monostate>)
                    pk.pack_nil();
                else if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>) {
                    if (x.data.size() < kOwnFrame) {
                        bin(x.data);
                    } else { // a frame of its own: borrowed while `keep` owns it, else one copy
                        pk.pack_array(1);
                        pk.pack(std::uint32_t(arrays.size()));
                        if (keep)
                            arrays.emplace_back(
                                const_cast<char*>(x.data.data()), x.data.size(),
                                [](void*, void* hint) { delete static_cast<std::shared_ptr<const void>*>(hint); },
                                new std::shared_ptr<const void>(keep));
                        else
                            arrays.emplace_back(x.data.data(), x.data.size());
                    }
                }
                else if constexpr (std::is_same_v<T, Array>) {
                    (*this)(x.dtype, x.shape, std::uint32_t(arrays.size()));
                    // Zero-copy: the frame keeps the array's owner alive until ZeroMQ has sent it.
                    auto* keep = new std::shared_ptr<const void>(x.owner);
                    arrays.emplace_back(
                        const_cast<void*>(x.data), x.nbytes,
                        [](void*, void* hint) { delete static_cast<std::shared_ptr<const void>*>(hint); }, keep);
                } else
                    put(x);
            },
            v);
    }
    void put(const Params& p) {
        pk.pack_array(std::uint32_t(p.size()));
        for (auto& [k, v] : p) (*this)(k, v);
    }

    Frames finish(Type t) {
        Frames f;
        f.emplace_back(&t, 1);
        f.emplace_back(buf.data(), buf.size());
        for (auto& a : arrays) f.push_back(std::move(a));
        return f;
    }
};

// Reads fields in order from a msgpack array; array values borrow their frames. Nothing from a peer is
// trusted: each field is checked (type, UTF-8, ranges, sizes) and an error names the message and the
// field's path of indices (e.g. "field 0.3.2": item 3 of field 0, its field 2).
struct In {
    using Arrays = std::vector<std::shared_ptr<zmq::message_t>>;
    const msgpack::object* items = nullptr;
    std::uint32_t n = 0, i = 0;
    Arrays* arrays = nullptr;
    const std::string* message = nullptr; // its type's name
    const In* parent = nullptr;           // for the path in errors
    std::uint32_t at = 0;                 // this one's index in parent
    // Inside a Result texts may be any bytes: the receiver turns bad ones into that job's error
    // (ResultsManager's check_texts, _core's text()), where refusing would drop the whole batch.
    bool any_bytes = false;
    std::string* bad_value = nullptr; // inside a Result: a malformed value fails its job, not the message

    In(const msgpack::object& o, Arrays* a, const std::string* msg, const In* up = nullptr, std::uint32_t index = 0)
        : arrays(a), message(msg), parent(up), at(index), any_bytes(up && up->any_bytes) {
        if (o.type != msgpack::type::ARRAY) fail("expected an array", /*here=*/false);
        items = o.via.array.ptr;
        n = o.via.array.size;
    }
    template <class... T> void operator()(T&... xs) { (read(xs), ...); }

    void indices(std::vector<std::uint32_t>& out) const {
        if (!parent) return;
        parent->indices(out);
        out.push_back(at);
    }
    // `here`: about the field last read; otherwise about this whole list.
    [[noreturn]] void fail(const std::string& what, bool here = true) const {
        std::vector<std::uint32_t> path;
        indices(path);
        if (here) path.push_back(i ? i - 1 : 0);
        std::string p = fmt::format("{}", fmt::join(path, "."));
        malformed(message ? *message : "a", p.empty() ? what : fmt::format("field {}: {}", p, what));
    }

    const msgpack::object& next() {
        if (i >= n) {
            ++i; // the missing field is the one named
            fail(fmt::format("missing (the list has {} fields)", n));
        }
        return items[i++];
    }
    In sub() {
        auto& o = next();
        return In(o, arrays, message, this, i - 1);
    }
    template <class T> T get() {
        try {
            return next().as<T>();
        } catch (const msgpack::type_error&) {
            fail("has the wrong type or is out of range");
        }
    }
    template <class T>
    requires std::is_arithmetic_v<T>
    void read(T& v) { v = get<T>(); }
    void read(std::string& s) {
        auto& o = next();
        if (o.type != msgpack::type::STR) fail("expected a string");
        s.assign(o.via.str.ptr, o.via.str.size);
        if (any_bytes) return;
        if (auto bad = invalid_utf8_at(s); bad != std::string::npos)
            fail(fmt::format("not UTF-8 (byte {} of {})", bad, s.size())); // never the text: it may be a secret
    }
    template <class T>
    requires std::is_enum_v<T>
    void read(T& v) {
        int x = get<int>();
        if (x < 0 || x > int(last_of(v))) fail(fmt::format("enum value {} out of range", x));
        v = T(x);
    }
    static Status last_of(Status) { return Status::timeout; }
    static ValueType last_of(ValueType) { return ValueType::array; }
    template <class T> void read(std::vector<T>& v) {
        In list = sub();
        v.clear();
        v.reserve(list.n); // bounded by the body's size (limits_for)
        while (list.i < list.n) list.read(v.emplace_back());
    }
    template <Record T> void read(T& r) {
        In s = sub();
        if constexpr (std::is_same_v<T, Result>) {
            std::string bad;
            s.any_bytes = true;
            s.bad_value = &bad;
            fields(s, r);
            if (!bad.empty()) {
                r.status = Status::error;
                r.error_type = "dynexec.ResultDecodeError";
                r.message = fmt::format("job {}: the result of service {} came malformed: {}", r.job_id, r.service, bad);
                r.value = std::monostate{};
            }
        } else
            fields(s, r);
    }
    void read(std::optional<Value>& v) {
        In x = sub();
        bool has = x.get<bool>();
        Value value;
        x.read(value);
        v = has ? std::optional(std::move(value)) : std::nullopt;
    }
    std::string bin() {
        auto& o = next();
        if (o.type == msgpack::type::ARRAY && o.via.array.size == 1) { // in a frame of its own
            In ref(o, arrays, message, this, i - 1);
            auto frame = ref.get<std::uint32_t>();
            if (!arrays || frame >= arrays->size()) ref.fail(fmt::format("bytes frame {} missing", frame));
            auto& msg = (*arrays)[frame];
            return std::string(static_cast<const char*>(msg->data()), msg->size());
        }
        if (o.type != msgpack::type::BIN) fail("expected bytes");
        return std::string(o.via.bin.ptr, o.via.bin.size);
    }
    void read(Value& out) {
        if (!bad_value) return read_value(out);
        std::uint32_t field = i; // whatever is wrong inside the Result's value stays in it
        try {
            read_value(out);
        } catch (const std::runtime_error& e) {
            i = field + 1;
            *bad_value = e.what();
            out = std::monostate{};
        }
    }
    void read_value(Value& out) {
        In v = sub();
        int kind = v.get<int>();
        switch (kind) {
        case 0:
            v.next();
            out = std::monostate{};
            return;
        case 1:
            out = v.get<bool>();
            return;
        case 2:
            out = v.get<std::int64_t>();
            return;
        case 3:
            out = v.get<double>();
            return;
        case 4: {
            std::string s;
            v.read(s);
            out = std::move(s);
            return;
        }
        case 5:
            out = Bytes{v.bin()};
            return;
        case 6:
            out = Pickled{v.bin()};
            return;
        case 7: {
            In a = v.sub();
            Array arr;
            std::uint32_t frame = 0;
            a(arr.dtype, arr.shape, frame);
            if (!arrays || frame >= arrays->size()) a.fail(fmt::format("array frame missing (index {}, {} frames)", frame, arrays ? arrays->size() : 0));
            auto& msg = (*arrays)[frame];
            if (auto problem = array_problem(arr, msg->size()); !problem.empty()) a.fail(problem, false);
            arr.data = msg->data();
            arr.nbytes = msg->size();
            arr.owner = std::shared_ptr<const void>(msg, msg->data());
            out = std::move(arr);
            return;
        }
        }
        v.fail(fmt::format("unknown value kind {}", kind), false);
    }
    void read(Params& p) {
        In list = sub();
        if (list.n > kMaxParams) list.fail(fmt::format("{} parameters, more than {}", list.n, kMaxParams), false);
        while (list.i < list.n) {
            In kv = list.sub();
            std::string k;
            Value v;
            kv(k, v);
            p.set(std::move(k), std::move(v));
        }
    }
};

// Holds the unpacked body and the array frames while a message is decoded.
struct Body {
    std::string name; // the message type's, for errors
    msgpack::object_handle oh;
    std::vector<std::shared_ptr<zmq::message_t>> arrays;
    std::optional<In> in;

    explicit Body(Frames& frames) : name(message_name(frames)) {
        if (frames.size() < 2) malformed(name, "no body");
        if (frames.size() > kMaxFrames) malformed(name, fmt::format("{} frames, more than {}", frames.size(), kMaxFrames));
        try {
            auto size = frames[1].size();
            oh = msgpack::unpack(frames[1].data<const char>(), size, nullptr, nullptr, limits_for(size));
        } catch (const std::exception& e) { // a truncated body, a count or depth past the limits
            malformed(name, fmt::format("body: {}", e.what()));
        }
        for (std::size_t i = 2; i < frames.size(); ++i)
            arrays.push_back(std::make_shared<zmq::message_t>(std::move(frames[i])));
        in.emplace(oh.get(), &arrays, &name);
    }
    In& operator*() { return *in; }
};

// A job is shared state (its dispatch word), not a plain record: its fields are listed here.
template <class IO> void job_fields(IO& io, Job& j, int& attempt) {
    io(j.id, j.service, j.params, j.owner, j.submit_time, j.time_limit, attempt);
}

// Output chunks carry raw bytes (a chunk may end inside a UTF-8 sequence): packed as bin, not str.
void put_chunks(Out& o, const std::vector<OutputChunk>& chunks) {
    o.pk.pack_array(std::uint32_t(chunks.size()));
    for (auto& c : chunks) {
        o.pk.pack_array(4);
        o.put(c.job_id);
        o.put(c.stream);
        o.bin(c.data);
        o.put(c.final);
    }
}
std::vector<OutputChunk> read_chunks(In& list) {
    std::vector<OutputChunk> chunks;
    while (list.i < list.n) {
        In c = list.sub();
        auto& chunk = chunks.emplace_back();
        c(chunk.job_id, chunk.stream);
        chunk.data = c.bin();
        c(chunk.final);
    }
    return chunks;
}

// What the field types alone do not check, per message; most have nothing more.
template <class M> void check(const std::string&, const M&) {}
void check_keys(const std::string& message, const std::vector<std::string>& keys) {
    for (std::size_t i = 0; i < keys.size(); ++i)
        if (!valid_object_key(keys[i]))
            malformed(message, fmt::format("field 0.{}: not an object key ({} hex digits)", i, kObjectKeySize));
}
void check(const std::string& message, const Forget& m) { check_keys(message, m.keys); }
void check(const std::string& message, const Release& m) { check_keys(message, m.keys); }

template <class M> struct Codec {
    static Frames encode(const M& m) {
        Out o;
        fields(o, const_cast<M&>(m));
        return o.finish(M::type);
    }
    static M decode(Frames& frames) {
        Body b(frames);
        M m;
        fields(*b, m);
        check(b.name, m);
        return m;
    }
};
template <> struct Codec<JobMsg> {
    static Frames encode(const JobMsg& m) {
        Out o;
        o.keep = m.job; // a job's parameters do not change once submitted: sent without a copy
        int attempt = m.attempt;
        if (m.cached.empty()) {
            job_fields(o, *m.job, attempt);
        } else { // objects the server keeps go as None (a copy of the list, not of the values)
            Job& j = *m.job;
            Params params;
            for (auto& [name, v] : j.params) {
                auto key = object_key(name);
                bool has = !key.empty() && std::find(m.cached.begin(), m.cached.end(), key) != m.cached.end();
                params.set(name, has ? Value{} : v);
            }
            o(j.id, j.service, params, j.owner, j.submit_time, j.time_limit, attempt);
        }
        return o.finish(JobMsg::type);
    }
    static JobMsg decode(Frames& frames) {
        Body b(frames);
        JobMsg m;
        m.job = std::make_shared<Job>();
        job_fields(*b, *m.job, m.attempt);
        if (m.attempt < 0) malformed(b.name, fmt::format("attempt {} is negative", m.attempt));
        m.job->requeue(m.attempt);
        return m;
    }
};
template <class M>
requires std::is_same_v<M, OutputMsg> || std::is_same_v<M, ClientOutput>
struct Codec<M> {
    static Frames encode(const M& m) {
        Out o;
        put_chunks(o, m.chunks);
        return o.finish(M::type);
    }
    static M decode(Frames& frames) {
        Body b(frames);
        M m;
        m.chunks = read_chunks(*b);
        return m;
    }
};

#define DYNEXEC_MESSAGES(X)                                                                                   \
    X(HelloServer) X(Offer) X(Renew) X(ResultMsg) X(Started) X(Revoked) X(Leaving) X(OutputMsg) X(Welcome)          \
    X(Refused) X(Expired) X(JobMsg) X(Stop) X(Renewed) X(LoadPlugin) X(Revoke) X(StopJob) X(Echo) X(Forget) X(HelloClient)\
    X(Release) X(Submit) X(Cancel) X(Kill) X(StateQuery) X(BacklogQuery) X(ServersQuery) X(ShutdownCluster) X(WatchOutput)      \
    X(MoreIds) X(ServicesQuery) X(WelcomeClient) X(Results) X(ClientOutput) X(Cancelled) X(Killed) X(JobStateReply)     \
    X(BacklogReply) X(ServersReply) X(Done) X(ErrorReply) X(IdsReply) X(ServicesReply)

template <class... M> struct MessageList {};
#define DYNEXEC_ITEM(M) , M
template <class Void, class... M> using ListOf = MessageList<M...>;
using Messages = ListOf<void DYNEXEC_MESSAGES(DYNEXEC_ITEM)>;
#undef DYNEXEC_ITEM

template <class... M> void decode_one_of(MessageList<M...>, Frames& frames) {
    if (!visit<M...>(frames, [](auto&&) {})) malformed(message_name(frames), "no such message type");
}

} // namespace

Type type_of(const Frames& frames) {
    if (frames.empty() || frames[0].size() != 1) throw std::runtime_error("malformed message: no type frame");
    return Type(*frames[0].data<std::uint8_t>());
}

const char* type_name(Type t) {
    switch (t) {
#define DYNEXEC_TYPE(x) \
    case Type::x: return #x;
        DYNEXEC_TYPE(hello_server) DYNEXEC_TYPE(offer) DYNEXEC_TYPE(renew) DYNEXEC_TYPE(result) DYNEXEC_TYPE(started)
        DYNEXEC_TYPE(revoked) DYNEXEC_TYPE(leaving) DYNEXEC_TYPE(output) DYNEXEC_TYPE(welcome) DYNEXEC_TYPE(refused)
        DYNEXEC_TYPE(expired) DYNEXEC_TYPE(job) DYNEXEC_TYPE(stop) DYNEXEC_TYPE(renewed) DYNEXEC_TYPE(load_plugin)
        DYNEXEC_TYPE(revoke) DYNEXEC_TYPE(stop_job) DYNEXEC_TYPE(echo) DYNEXEC_TYPE(forget) DYNEXEC_TYPE(hello_client) DYNEXEC_TYPE(submit)
        DYNEXEC_TYPE(cancel) DYNEXEC_TYPE(kill) DYNEXEC_TYPE(state) DYNEXEC_TYPE(backlog) DYNEXEC_TYPE(servers)
        DYNEXEC_TYPE(shutdown) DYNEXEC_TYPE(watch_output) DYNEXEC_TYPE(more_ids) DYNEXEC_TYPE(services) DYNEXEC_TYPE(release)
        DYNEXEC_TYPE(welcome_client) DYNEXEC_TYPE(results) DYNEXEC_TYPE(job_output) DYNEXEC_TYPE(cancelled)
        DYNEXEC_TYPE(killed) DYNEXEC_TYPE(job_state) DYNEXEC_TYPE(backlog_reply) DYNEXEC_TYPE(servers_reply)
        DYNEXEC_TYPE(done) DYNEXEC_TYPE(error) DYNEXEC_TYPE(ids) DYNEXEC_TYPE(services_reply)
#undef DYNEXEC_TYPE
    }
    return "unknown";
}

template <class M> Frames encode(const M& m) { return Codec<M>::encode(m); }
template <class M> M decode(Frames& frames) { return Codec<M>::decode(frames); }

void decode_any(Frames& frames) { decode_one_of(Messages{}, frames); }

// Every message's encode and decode, instantiated once here.
#define DYNEXEC_INSTANTIATE(M)                                                                                    \
    template Frames encode<M>(const M&);                                                                          \
    template M decode<M>(Frames&);
DYNEXEC_MESSAGES(DYNEXEC_INSTANTIATE)
#undef DYNEXEC_INSTANTIATE

} // namespace dynexec::wire
