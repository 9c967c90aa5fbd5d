#include "wire/protocol.hpp"

#define MSGPACK_NO_BOOST
#include <msgpack.hpp>

#include <fmt/format.h>

namespace dynexec::wire {
namespace {

[[noreturn]] void malformed(const std::string& what) { throw std::runtime_error("malformed message: " + what); }

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

// Reads fields in order from a msgpack array; array values borrow their frames.
struct In {
    const msgpack::object* items = nullptr;
    std::uint32_t n = 0, i = 0;
    std::vector<std::shared_ptr<zmq::message_t>>* arrays = nullptr;

    In(const msgpack::object& o, std::vector<std::shared_ptr<zmq::message_t>>* a) : arrays(a) {
        if (o.type != msgpack::type::ARRAY) malformed("expected an array");
        items = o.via.array.ptr;
        n = o.via.array.size;
    }
    template <class... T> void operator()(T&... xs) { (read(xs), ...); }

    const msgpack::object& next() {
        if (i >= n) malformed("too few fields");
        return items[i++];
    }
    In sub() { return In(next(), arrays); }
    template <class T> T get() {
        try {
            return next().as<T>();
        } catch (const msgpack::type_error&) {
            malformed(fmt::format("field {} has the wrong type", i - 1));
        }
    }
    template <class T>
    requires std::is_arithmetic_v<T>
    void read(T& v) { v = get<T>(); }
    void read(std::string& s) { s = get<std::string>(); }
    template <class T>
    requires std::is_enum_v<T>
    void read(T& v) {
        int x = get<int>();
        if (x < 0 || x > int(last_of(v))) malformed(fmt::format("enum value {} out of range", x));
        v = T(x);
    }
    static Status last_of(Status) { return Status::timeout; }
    static ValueType last_of(ValueType) { return ValueType::array; }
    template <class T> void read(std::vector<T>& v) {
        In list = sub();
        v.clear();
        while (list.i < list.n) list.read(v.emplace_back());
    }
    template <Record T> void read(T& r) {
        In s = sub();
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
            auto frame = In(o, arrays).get<std::uint32_t>();
            if (!arrays || frame >= arrays->size()) malformed("bytes frame missing");
            auto& msg = (*arrays)[frame];
            return std::string(static_cast<const char*>(msg->data()), msg->size());
        }
        if (o.type != msgpack::type::BIN) malformed("expected bytes");
        return std::string(o.via.bin.ptr, o.via.bin.size);
    }
    void read(Value& out) {
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
        case 4:
            out = v.get<std::string>();
            return;
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
            if (frame >= arrays->size()) malformed("array frame missing");
            auto& msg = (*arrays)[frame];
            arr.data = msg->data();
            arr.nbytes = msg->size();
            arr.owner = std::shared_ptr<const void>(msg, msg->data());
            if (arr.itemsize() == 0 || arr.size() * arr.itemsize() != arr.nbytes) malformed("array size mismatch");
            out = std::move(arr);
            return;
        }
        }
        malformed(fmt::format("unknown value kind {}", kind));
    }
    void read(Params& p) {
        In list = sub();
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
    msgpack::object_handle oh;
    std::vector<std::shared_ptr<zmq::message_t>> arrays;
    std::optional<In> in;

    explicit Body(Frames& frames) {
        if (frames.size() < 2) malformed("no body");
        try {
            oh = msgpack::unpack(frames[1].data<const char>(), frames[1].size());
        } catch (const std::exception& e) {
            malformed(e.what());
        }
        for (std::size_t i = 2; i < frames.size(); ++i)
            arrays.push_back(std::make_shared<zmq::message_t>(std::move(frames[i])));
        in.emplace(oh.get(), &arrays);
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
    if (frames.empty() || frames[0].size() != 1) malformed("no type frame");
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
    o.keep = m.job; // a job's parameters do not change once submitted: sent without a copy
    o(m.job->id, m.job->service, m.job->params, m.job->owner, m.job->submit_time, m.job->time_limit, m.attempt);
    return o.finish(Type::job);
}
template <> JobMsg decode(Frames& f) {
    Body b(f);
    JobMsg m;
    m.job = std::make_shared<Job>();
    (*b)(m.job->id, m.job->service, m.job->params, m.job->owner, m.job->submit_time, m.job->time_limit, m.attempt);
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

} // namespace dynexec::wire
