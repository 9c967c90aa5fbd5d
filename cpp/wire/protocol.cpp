#include "wire/protocol.hpp"
#include "wire/limits.hpp"

#define MSGPACK_NO_BOOST
#include <msgpack.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace dynexec::wire {
namespace {

// The name of a message type, for errors; nullptr for a type byte that is none.
const char* message_name(Type t) {
    switch (t) {
    case Type::hello_server: return "hello_server";
    case Type::renew: return "renew";
    case Type::result: return "result";
    case Type::offer: return "offer";
    case Type::started: return "started";
    case Type::revoked: return "revoked";
    case Type::leaving: return "leaving";
    case Type::output: return "output";
    case Type::welcome: return "welcome";
    case Type::expired: return "expired";
    case Type::job: return "job";
    case Type::stop: return "stop";
    case Type::renewed: return "renewed";
    case Type::load_plugin: return "load_plugin";
    case Type::revoke: return "revoke";
    case Type::stop_job: return "stop_job";
    case Type::echo: return "echo";
    case Type::hello_client: return "hello_client";
    case Type::submit: return "submit";
    case Type::cancel: return "cancel";
    case Type::servers: return "servers";
    case Type::shutdown: return "shutdown";
    case Type::kill: return "kill";
    case Type::state: return "state";
    case Type::backlog: return "backlog";
    case Type::reply: return "reply";
    case Type::results: return "results";
    }
    return nullptr;
}

std::string message_name(const Frames& frames) {
    if (frames.empty() || frames[0].size() != 1) return "untyped";
    auto t = *frames[0].data<std::uint8_t>();
    const char* name = message_name(Type(t));
    return name ? name : fmt::format("type-{}", t);
}

[[noreturn]] void malformed(const std::string& message, const std::string& what) {
    throw std::runtime_error(fmt::format("malformed {} message: {}", message, what));
}

// --- Checks of what a peer sent, kept apart from the encoding so that changes to either merge easily. ---

// The offset of the first byte that is not well-formed UTF-8 as Python decodes it (no overlongs, no
// surrogates, nothing past U+10FFFF); npos if all is.
std::size_t utf8_error_at(std::string_view s) {
    auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    for (std::size_t i = 0; i < s.size();) {
        unsigned c = byte(i);
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t n;
        unsigned lo = 0x80, hi = 0xbf; // the range of the second byte
        if (c >= 0xc2 && c <= 0xdf) n = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0) lo = 0xa0;
            else if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0) lo = 0x90;
            else if (c == 0xf4) hi = 0x8f;
        } else return i;
        if (i + n >= s.size()) return i;
        if (byte(i + 1) < lo || byte(i + 1) > hi) return i;
        for (std::size_t k = 2; k <= n; ++k)
            if ((byte(i + k) & 0xc0) != 0x80) return i;
        i += n + 1;
    }
    return std::string_view::npos;
}

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
    io(m.host, m.pid, m.slots, m.services, m.replaces_pid, m.replaced_because);
}
template <class IO> void fields(IO& io, Welcome& m) { io(m.id, m.lease_seconds, m.renew_seconds); }
template <class IO> void fields(IO& io, Renew& m) { io(m.stats); }
template <class IO> void fields(IO& io, ResultMsg& m) { io(m.result, m.attempt); }
template <class IO> void fields(IO& io, HelloClient& m) { io(m.owner); }
template <class IO> void fields(IO& io, Request& m) { io(m.id, m.job_id); }
template <class IO> void fields(IO& io, JobOptions& o) { io(o.time_limit, o.retries); }
template <class IO> void fields(IO& io, Submit& m) { io(m.id, m.service, m.params, m.owner, m.options); }
template <class IO> void fields(IO& io, Dispatch& m) { io(m.job_id, m.attempt); }
template <class IO> void fields(IO& io, Revoked& m) { io(m.job_id, m.attempt, m.ok); }
template <class IO> void fields(IO& io, StopJob& m) { io(m.job_id, m.attempt, m.why); }
template <class IO> void fields(IO& io, Leaving& m) { io(m.reason); }
template <class IO> void fields(IO& io, ServiceCount& c) { io(c.service, c.jobs); }
template <class IO> void fields(IO& io, Backlog& b) { io(b.running, b.queued, b.waiting); }
template <class IO> void fields(IO& io, Reply& m) { io(m.id, m.error_type, m.message, m.flag, m.servers, m.backlog); }
template <class IO> void fields(IO& io, Results& m) { io(m.results); }

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
                    } else { // one copy into a frame of its own, not several through msgpack's buffer
                        pk.pack_array(1);
                        pk.pack(std::uint32_t(arrays.size()));
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
        if (auto bad = utf8_error_at(s); bad != std::string::npos)
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

template <class M> Frames encode_as(Type t, const M& m) {
    Out o;
    fields(o, const_cast<M&>(m));
    return o.finish(t);
}

template <class M> M decode_as(Frames& frames) {
    Body b(frames);
    M m;
    fields(*b, m);
    return m;
}

} // namespace

Type type_of(const Frames& frames) {
    if (frames.empty() || frames[0].size() != 1) throw std::runtime_error("malformed message: no type frame");
    return Type(*frames[0].data<std::uint8_t>());
}

Frames encode(Type type) {
    Out o;
    o();
    return o.finish(type);
}

Frames encode(const HelloServer& m, Type type) { return encode_as(type, m); }
Frames encode(const Welcome& m) { return encode_as(Type::welcome, m); }
Frames encode(const Renew& m) { return encode_as(Type::renew, m); }
Frames encode(const ResultMsg& m) { return encode_as(Type::result, m); }
Frames encode(const HelloClient& m) { return encode_as(Type::hello_client, m); }
Frames encode(Type type, const Request& m) { return encode_as(type, m); }
Frames encode(const Submit& m) { return encode_as(Type::submit, m); }
Frames encode(const Reply& m) { return encode_as(Type::reply, m); }
Frames encode(const Results& m) { return encode_as(Type::results, m); }
Frames encode(Type type, const Dispatch& m) { return encode_as(type, m); }
Frames encode(const Revoked& m) { return encode_as(Type::revoked, m); }
Frames encode(const StopJob& m) { return encode_as(Type::stop_job, m); }
Frames encode(const Leaving& m) { return encode_as(Type::leaving, m); }

template <> HelloServer decode(Frames& f) { return decode_as<HelloServer>(f); }
template <> Welcome decode(Frames& f) { return decode_as<Welcome>(f); }
template <> Renew decode(Frames& f) { return decode_as<Renew>(f); }
template <> ResultMsg decode(Frames& f) { return decode_as<ResultMsg>(f); }
template <> HelloClient decode(Frames& f) { return decode_as<HelloClient>(f); }
template <> Request decode(Frames& f) { return decode_as<Request>(f); }
template <> Submit decode(Frames& f) { return decode_as<Submit>(f); }
template <> Reply decode(Frames& f) { return decode_as<Reply>(f); }
template <> Results decode(Frames& f) { return decode_as<Results>(f); }
template <> Dispatch decode(Frames& f) { return decode_as<Dispatch>(f); }
template <> Revoked decode(Frames& f) { return decode_as<Revoked>(f); }
template <> StopJob decode(Frames& f) { return decode_as<StopJob>(f); }
template <> Leaving decode(Frames& f) { return decode_as<Leaving>(f); }

// A job is shared state (its dispatch word), not a plain record: its fields are listed here.
Frames encode(const JobMsg& m) {
    Out o;
    o(m.job->id, m.job->service, m.job->params, m.job->owner, m.job->submit_time, m.job->time_limit, m.attempt);
    return o.finish(Type::job);
}
template <> JobMsg decode(Frames& f) {
    Body b(f);
    JobMsg m;
    m.job = std::make_shared<Job>();
    (*b)(m.job->id, m.job->service, m.job->params, m.job->owner, m.job->submit_time, m.job->time_limit, m.attempt);
    if (m.attempt < 0) malformed(b.name, fmt::format("attempt {} is negative", m.attempt));
    m.job->requeue(m.attempt);
    return m;
}


// Output chunks carry raw bytes (a chunk may end inside a UTF-8 sequence): packed as bin, not str.
Frames encode(const OutputMsg& m) {
    Out o;
    o.pk.pack_array(std::uint32_t(m.chunks.size()));
    for (auto& c : m.chunks) {
        o.pk.pack_array(4);
        o.put(c.job_id);
        o.put(c.stream);
        o.bin(c.data);
        o.put(c.final);
    }
    return o.finish(Type::output);
}
template <> OutputMsg decode(Frames& f) {
    Body b(f);
    OutputMsg m;
    In& list = *b;
    while (list.i < list.n) {
        In c = list.sub();
        auto& chunk = m.chunks.emplace_back();
        c(chunk.job_id, chunk.stream);
        chunk.data = c.bin();
        c(chunk.final);
    }
    return m;
}

// Every type, decoded as the receiver does: what the fuzz targets call. Keep in step with Type.
void decode_any(Frames& f) {
    switch (type_of(f)) {
    case Type::hello_server:
    case Type::offer: decode<HelloServer>(f); return;
    case Type::renew: decode<Renew>(f); return;
    case Type::result: decode<ResultMsg>(f); return;
    case Type::started:
    case Type::revoke: decode<Dispatch>(f); return;
    case Type::revoked: decode<Revoked>(f); return;
    case Type::leaving: decode<Leaving>(f); return;
    case Type::output: decode<OutputMsg>(f); return;
    case Type::welcome: decode<Welcome>(f); return;
    case Type::job: decode<JobMsg>(f); return;
    case Type::stop_job: decode<StopJob>(f); return;
    case Type::load_plugin:
    case Type::echo:
    case Type::cancel:
    case Type::servers:
    case Type::shutdown:
    case Type::kill:
    case Type::state:
    case Type::backlog: decode<Request>(f); return;
    case Type::hello_client: decode<HelloClient>(f); return;
    case Type::submit: decode<Submit>(f); return;
    case Type::reply: decode<Reply>(f); return;
    case Type::results: decode<Results>(f); return;
    case Type::expired:
    case Type::stop:
    case Type::renewed: { // no body to read, but it must be one
        Body b(f);
        return;
    }
    }
    throw std::runtime_error(fmt::format("malformed message: unknown type {}", int(*f[0].data<std::uint8_t>())));
}

} // namespace dynexec::wire
