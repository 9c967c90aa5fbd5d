#include "wire/protocol.hpp"

#define MSGPACK_NO_BOOST
#include <msgpack.hpp>

#include <fmt/format.h>

namespace dynexec::wire {
namespace {

[[noreturn]] void malformed(const std::string& what) { throw std::runtime_error("malformed message: " + what); }

// Packs fields in order; arrays go to their own frames.
struct Out {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk{buf};
    Frames arrays;

    void put(const std::string& s) { pk.pack(s); }
    void put(std::int64_t v) { pk.pack(v); }
    void put(std::uint64_t v) { pk.pack(v); }
    void put(int v) { pk.pack(v); }
    void put(unsigned v) { pk.pack(v); }
    void put(double v) { pk.pack(v); }
    void put(bool v) { pk.pack(v); }
    void bin(const std::string& s) {
        pk.pack_bin(std::uint32_t(s.size()));
        pk.pack_bin_body(s.data(), std::uint32_t(s.size()));
    }
    void put(const Value& v) {
        pk.pack_array(2);
        pk.pack(int(v.index()));
        std::visit(
            [&](auto&& x) {
                using T = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<T, std::monostate>)
                    pk.pack_nil();
                else if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>)
                    bin(x.data);
                else if constexpr (std::is_same_v<T, Array>) {
                    pk.pack_array(3);
                    pk.pack(x.dtype);
                    pk.pack(x.shape);
                    pk.pack(std::uint32_t(arrays.size()));
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
        for (auto& [k, v] : p) {
            pk.pack_array(2);
            put(k);
            put(v);
        }
    }
    void put(const ServerStats& s) {
        pk.pack_array(4);
        put(std::uint64_t(s.jobs_done));
        put(s.busy_time);
        put(s.last_completion);
        put(unsigned(s.in_flight));
    }
    void put(const Result& r) {
        pk.pack_array(14);
        put(r.job_id);
        put(int(r.status));
        put(r.value);
        put(r.error_type);
        put(r.message);
        put(r.traceback);
        put(r.owner);
        put(r.service);
        put(r.server);
        put(r.submit_time);
        put(r.start_time);
        put(r.end_time);
        put(r.attempts);
        put(r.location);
    }
    void put(const ServiceDef& d) {
        pk.pack_array(3);
        put(d.name);
        put(d.doc);
        pk.pack_array(std::uint32_t(d.params.size()));
        for (auto& p : d.params) {
            pk.pack_array(5);
            put(p.name);
            put(int(p.type));
            put(p.default_value.has_value());
            put(p.default_value ? *p.default_value : Value{});
            put(p.doc);
        }
    }
    void put(const ServerInfo& s) {
        pk.pack_array(6);
        put(s.id);
        put(s.host);
        put(s.pid);
        put(s.lease_expiry);
        pk.pack(s.services);
        put(s.stats);
    }

    Frames finish(Type t) {
        Frames f;
        f.emplace_back(&t, 1);
        f.emplace_back(buf.data(), buf.size());
        for (auto& a : arrays) f.push_back(std::move(a));
        return f;
    }
};

// Reads fields in order from a msgpack array.
struct In {
    const msgpack::object* items = nullptr;
    std::uint32_t n = 0, i = 0;
    std::vector<std::shared_ptr<zmq::message_t>>* arrays = nullptr;

    In(const msgpack::object& o, std::vector<std::shared_ptr<zmq::message_t>>* a) : arrays(a) {
        if (o.type != msgpack::type::ARRAY) malformed("expected an array");
        items = o.via.array.ptr;
        n = o.via.array.size;
    }
    const msgpack::object& next() {
        if (i >= n) malformed("too few fields");
        return items[i++];
    }
    template <class T> T get() {
        try {
            return next().as<T>();
        } catch (const msgpack::type_error&) {
            malformed(fmt::format("field {} has the wrong type", i - 1));
        }
    }
    std::string bin() {
        auto& o = next();
        if (o.type != msgpack::type::BIN) malformed("expected bytes");
        return std::string(o.via.bin.ptr, o.via.bin.size);
    }
    Value value() {
        In v(next(), arrays);
        int kind = v.get<int>();
        switch (kind) {
        case 0:
            v.next();
            return std::monostate{};
        case 1:
            return v.get<bool>();
        case 2:
            return v.get<std::int64_t>();
        case 3:
            return v.get<double>();
        case 4:
            return v.get<std::string>();
        case 5:
            return Bytes{v.bin()};
        case 6:
            return Pickled{v.bin()};
        case 7: {
            In a(v.next(), arrays);
            Array arr;
            arr.dtype = a.get<std::string>();
            arr.shape = a.get<std::vector<std::int64_t>>();
            auto frame = a.get<std::uint32_t>();
            if (frame >= arrays->size()) malformed("array frame missing");
            auto& msg = (*arrays)[frame];
            arr.data = msg->data();
            arr.nbytes = msg->size();
            arr.owner = std::shared_ptr<const void>(msg, msg->data());
            if (arr.itemsize() == 0 || arr.size() * arr.itemsize() != arr.nbytes) malformed("array size mismatch");
            return arr;
        }
        }
        malformed(fmt::format("unknown value kind {}", kind));
    }
    Params params() {
        In list(next(), arrays);
        Params p;
        while (list.i < list.n) {
            In kv(list.next(), arrays);
            auto k = kv.get<std::string>();
            p.set(std::move(k), kv.value());
        }
        return p;
    }
    ServerStats stats() {
        In s(next(), arrays);
        ServerStats st;
        st.jobs_done = s.get<std::uint64_t>();
        st.busy_time = s.get<double>();
        st.last_completion = s.get<double>();
        st.in_flight = s.get<unsigned>();
        return st;
    }
    Result result() {
        In x(next(), arrays);
        Result r;
        r.job_id = x.get<std::string>();
        int st = x.get<int>();
        if (st < 0 || st > int(Status::lost)) malformed("bad status");
        r.status = Status(st);
        r.value = x.value();
        r.error_type = x.get<std::string>();
        r.message = x.get<std::string>();
        r.traceback = x.get<std::string>();
        r.owner = x.get<std::string>();
        r.service = x.get<std::string>();
        r.server = x.get<std::string>();
        r.submit_time = x.get<double>();
        r.start_time = x.get<double>();
        r.end_time = x.get<double>();
        r.attempts = x.get<int>();
        r.location = x.get<std::string>();
        return r;
    }
    ServiceDef service() {
        In x(next(), arrays);
        ServiceDef d;
        d.name = x.get<std::string>();
        d.doc = x.get<std::string>();
        In ps(x.next(), arrays);
        while (ps.i < ps.n) {
            In p(ps.next(), arrays);
            ParamSpec spec;
            spec.name = p.get<std::string>();
            int t = p.get<int>();
            if (t < 0 || t > int(ValueType::array)) malformed("bad parameter type");
            spec.type = ValueType(t);
            bool has_default = p.get<bool>();
            auto v = p.value();
            if (has_default) spec.default_value = std::move(v);
            spec.doc = p.get<std::string>();
            d.params.push_back(std::move(spec));
        }
        return d;
    }
    ServerInfo server_info() {
        In x(next(), arrays);
        ServerInfo s;
        s.id = x.get<std::string>();
        s.host = x.get<std::string>();
        s.pid = x.get<int>();
        s.lease_expiry = x.get<double>();
        s.services = x.get<std::vector<std::string>>();
        s.stats = x.stats();
        return s;
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

} // namespace

Type type_of(const Frames& frames) {
    if (frames.empty() || frames[0].size() != 1) malformed("no type frame");
    return Type(*frames[0].data<std::uint8_t>());
}

Frames encode(Type type) {
    Out o;
    o.pk.pack_array(0);
    return o.finish(type);
}

Frames encode(const HelloServer& m, Type type) {
    Out o;
    o.pk.pack_array(4);
    o.put(m.host);
    o.put(m.pid);
    o.put(m.slots);
    o.pk.pack_array(std::uint32_t(m.services.size()));
    for (auto& s : m.services) o.put(s);
    return o.finish(type);
}
template <> HelloServer decode(Frames& f) {
    Body b(f);
    HelloServer m;
    m.host = (*b).get<std::string>();
    m.pid = (*b).get<int>();
    m.slots = (*b).get<unsigned>();
    In list((*b).next(), &b.arrays);
    while (list.i < list.n) m.services.push_back(list.service());
    return m;
}

Frames encode(const Welcome& m) {
    Out o;
    o.pk.pack_array(3);
    o.put(m.id);
    o.put(m.lease_seconds);
    o.put(m.renew_seconds);
    return o.finish(Type::welcome);
}
template <> Welcome decode(Frames& f) {
    Body b(f);
    Welcome m;
    m.id = (*b).get<std::string>();
    m.lease_seconds = (*b).get<double>();
    m.renew_seconds = (*b).get<double>();
    return m;
}

Frames encode(const Renew& m) {
    Out o;
    o.pk.pack_array(1);
    o.put(m.stats);
    return o.finish(Type::renew);
}
template <> Renew decode(Frames& f) {
    Body b(f);
    return {(*b).stats()};
}

Frames encode(const JobMsg& m) {
    Out o;
    o.pk.pack_array(6);
    o.put(m.job->id);
    o.put(m.job->service);
    o.put(m.job->params);
    o.put(m.job->owner);
    o.put(m.job->submit_time);
    o.put(m.attempt);
    return o.finish(Type::job);
}
template <> JobMsg decode(Frames& f) {
    Body b(f);
    JobMsg m;
    m.job = std::make_shared<Job>();
    m.job->id = (*b).get<std::string>();
    m.job->service = (*b).get<std::string>();
    m.job->params = (*b).params();
    m.job->owner = (*b).get<std::string>();
    m.job->submit_time = (*b).get<double>();
    m.attempt = (*b).get<int>();
    m.job->requeue(m.attempt);
    return m;
}

Frames encode(const ResultMsg& m) {
    Out o;
    o.pk.pack_array(2);
    o.put(m.result);
    o.put(m.attempt);
    return o.finish(Type::result);
}
template <> ResultMsg decode(Frames& f) {
    Body b(f);
    ResultMsg m;
    m.result = (*b).result();
    m.attempt = (*b).get<int>();
    return m;
}

Frames encode(const HelloClient& m) {
    Out o;
    o.pk.pack_array(1);
    o.put(m.owner);
    return o.finish(Type::hello_client);
}
template <> HelloClient decode(Frames& f) {
    Body b(f);
    return {(*b).get<std::string>()};
}

Frames encode(Type type, const Request& m) {
    Out o;
    o.pk.pack_array(2);
    o.put(m.id);
    o.put(m.job_id);
    return o.finish(type);
}
template <> Request decode(Frames& f) {
    Body b(f);
    Request m;
    m.id = (*b).get<std::uint64_t>();
    m.job_id = (*b).get<std::string>();
    return m;
}

Frames encode(const Submit& m) {
    Out o;
    o.pk.pack_array(4);
    o.put(m.id);
    o.put(m.service);
    o.put(m.params);
    o.put(m.owner);
    return o.finish(Type::submit);
}
template <> Submit decode(Frames& f) {
    Body b(f);
    Submit m;
    m.id = (*b).get<std::uint64_t>();
    m.service = (*b).get<std::string>();
    m.params = (*b).params();
    m.owner = (*b).get<std::string>();
    return m;
}

Frames encode(const Reply& m) {
    Out o;
    o.pk.pack_array(5);
    o.put(m.id);
    o.put(m.error_type);
    o.put(m.message);
    o.put(m.flag);
    o.pk.pack_array(std::uint32_t(m.servers.size()));
    for (auto& s : m.servers) o.put(s);
    return o.finish(Type::reply);
}
template <> Reply decode(Frames& f) {
    Body b(f);
    Reply m;
    m.id = (*b).get<std::uint64_t>();
    m.error_type = (*b).get<std::string>();
    m.message = (*b).get<std::string>();
    m.flag = (*b).get<bool>();
    In list((*b).next(), &b.arrays);
    while (list.i < list.n) m.servers.push_back(list.server_info());
    return m;
}

Frames encode(const Results& m) {
    Out o;
    o.pk.pack_array(std::uint32_t(m.results.size()));
    for (auto& r : m.results) o.put(r);
    return o.finish(Type::results);
}
template <> Results decode(Frames& f) {
    Body b(f);
    Results m;
    while ((*b).i < (*b).n) m.results.push_back((*b).result());
    return m;
}

} // namespace dynexec::wire
