// pybind11 bindings: a thin layer over the C++ engine. Every call that enters
// the core releases the GIL first, since core threads take the GIL to run
// Python jobs and to release borrowed numpy arrays.
#include "archive/results_archive.hpp"
#include "archive/results_finder.hpp"
#include "balancer/policies.hpp"
#include "common/errors.hpp"
#include "common/objects.hpp"
#include "engine/engine.hpp"
#include "remote/client.hpp"
#include "remote/server_host.hpp"
#include "services/catalog.hpp"

#include <pybind11/chrono.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <fmt/format.h>

namespace py = pybind11;
using namespace pybind11::literals;
using namespace dynexec;

namespace {

// Owns a Python object from C++; may be released on any thread.
struct PyRef {
    void operator()(const void*) const {
        if (!Py_IsInitialized()) return; // interpreter gone: leak rather than crash
        py::gil_scoped_acquire gil;
        delete obj;
    }
    py::object* obj;
};

std::shared_ptr<const void> hold(py::object o) { return {o.ptr(), PyRef{new py::object(std::move(o))}}; }

std::string dtype_code(const py::dtype& dt) { return fmt::format("{}{}", dt.kind(), dt.itemsize()); }

// A connection argument (endpoint or CURVE key) as a string; a wrong type or a bad key fails naming the
// field, never showing its value (pybind11's own overload error would print every argument, secrets too).
std::string conn_arg(py::handle v, const char* field, bool key) {
    if (!py::isinstance<py::str>(v))
        throw py::type_error(fmt::format("{} must be a str, not {}", field, Py_TYPE(v.ptr())->tp_name));
    auto s = v.cast<std::string>();
    if (key) wire::check_key(field, s);
    return s;
}

std::string listen_arg(const py::dict& listen, const char* field, bool key) {
    if (!listen.contains(field)) throw py::value_error(fmt::format("listen lacks {}", field));
    return conn_arg(listen[field], (std::string("listen[") + field + "]").c_str(), key);
}

// Defence in depth: the decoders refuse these already, but numpy must never see a dtype outside the list
// ("O8" would make it read pointers, "U8" 32 bytes an item) nor a shape that does not fit the bytes.
void check_array(const Array& a) {
    if (!supported_dtype(a.dtype))
        throw std::invalid_argument(fmt::format("an array of dtype '{}', which is not one of dynexec's", a.dtype.substr(0, 16)));
    std::size_t n = 1;
    for (auto d : a.shape)
        if (d < 0 || __builtin_mul_overflow(n, std::size_t(d), &n))
            throw std::invalid_argument("an array whose shape has a negative or too large dimension");
    if (n * a.itemsize() != a.nbytes || (a.nbytes && !a.data))
        throw std::invalid_argument(fmt::format("an array of {} elements of {} in {} bytes", n, a.dtype, a.nbytes));
}

// A numpy array as an Array, borrowed when it is C-contiguous and native-endian.
Array to_array(py::array a, const std::string& what) {
    auto code = dtype_code(a.dtype());
    if (!supported_dtype(code))
        throw py::type_error(fmt::format("{}: numpy dtype '{}' is not supported by native services "
                                         "(use float64/32, int8-64, uint8-64 or bool)",
                                         what, py::str(a.dtype()).cast<std::string>()));
    if (!a.dtype().attr("isnative").cast<bool>() || !(a.flags() & py::array::c_style))
        a = py::array::ensure(a, py::array::c_style | py::array::forcecast);
    Array out;
    out.dtype = code;
    out.shape.assign(a.shape(), a.shape() + a.ndim());
    out.data = a.data();
    out.nbytes = size_t(a.nbytes());
    out.owner = hold(a);
    return out;
}

Value to_value(const py::handle& o, const std::string& what) {
    if (o.is_none()) return std::monostate{};
    if (py::isinstance<py::bool_>(o)) return o.cast<bool>();
    if (py::isinstance<py::int_>(o)) {
        try {
            return o.cast<std::int64_t>();
        } catch (const py::cast_error&) {
            throw py::value_error(fmt::format("{}: {} does not fit in a 64-bit integer", what, py::repr(o).cast<std::string>()));
        }
    }
    if (py::isinstance<py::float_>(o)) return o.cast<double>();
    if (py::isinstance<py::str>(o)) return o.cast<std::string>();
    if (py::isinstance<py::bytes>(o)) return Bytes{o.cast<std::string>()};
    if (py::isinstance<py::array>(o)) {
        auto a = py::reinterpret_borrow<py::array>(o);
        if (a.ndim() == 0) return to_value(o.attr("item")(), what); // numpy scalar array
        return to_array(a, what);
    }
    if (py::hasattr(o, "dtype") && py::hasattr(o, "item")) return to_value(o.attr("item")(), what); // numpy scalar
    throw py::type_error(fmt::format("{}: cannot pass a {} to a native service (use bool, int, float, str, bytes, "
                                     "None or a numpy array)",
                                     what, py::str(o.get_type().attr("__name__")).cast<std::string>()));
}

py::object from_value(const Value& v) {
    return std::visit(
        [](auto&& x) -> py::object {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, std::monostate>) return py::none();
            else if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>) return py::bytes(x.data);
            else if constexpr (std::is_same_v<T, Array>) {
                // A Python array that went through the engine comes back as itself.
                if (auto* ref = std::get_deleter<PyRef>(x.owner)) return *ref->obj;
                check_array(x);
                auto* keep = new std::shared_ptr<const void>(x.owner);
                py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); });
                std::vector<py::ssize_t> shape(x.shape.begin(), x.shape.end());
                return py::array(py::dtype(x.dtype == "b1" ? std::string("?") : x.dtype), shape, x.data, base);
            } else return py::cast(x);
        },
        v);
}

// A text field for Python: never raises; bytes that are not UTF-8 (an archive written before they were
// checked) show as \\xNN.
py::str text(const std::string& s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), py::ssize_t(s.size()), "backslashreplace");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

// One result for the collector: (job_id, is_pickle, raw value) for a success without output, (job_id, None,
// Result) otherwise.
// A value that cannot become a Python object fails its own job only, never the batch it came in.
py::object collector_item(Result& r) {
    py::str id = text(r.job_id); // the ID first: the Result is moved out after
    // A success that printed something travels as a Result too: its future gets the output.
    if (r.status == Status::ok && r.captured_stdout.empty() && r.captured_stderr.empty()) {
        try {
            return py::make_tuple(id, std::holds_alternative<Pickled>(r.value), from_value(r.value));
        } catch (const std::exception& e) { // py::error_already_set (a str that is not UTF-8), bad_alloc, ...
            r.status = Status::error;
            r.error_type = "dynexec.ResultDecodeError";
            r.message = fmt::format("job {}: the result of service {} cannot be converted to a Python object: {}",
                                    r.job_id, r.service, e.what());
            r.value = std::monostate{};
        }
    }
    return py::make_tuple(id, py::none(), py::cast(std::move(r)));
}

std::string_view value_kind(const Value& v) {
    static constexpr std::string_view names[] = {"none", "bool", "int", "float", "str", "bytes", "pickle", "array"};
    return names[v.index()];
}

// dynexec._runner.run, set when the module loads: a function-local static here
// would deadlock (its init guard is taken while the GIL is released by the import).
py::object* python_runner = nullptr;

// Runs a pickled Python callable in this process, under the GIL.
Value run_python(const Params& p) {
    const auto& payload = p.get<Pickled>("payload");
    py::gil_scoped_acquire gil;
    // Keep this worker thread's Python thread state: otherwise every job creates and destroys one.
    thread_local bool kept = false;
    if (!std::exchange(kept, true)) gil.inc_ref();
    py::dict objects; // "@<key>" parameters (common/objects.hpp): key -> its bytes, not copied
    for (auto& [name, v] : p) {
        auto key = object_key(name);
        if (key.empty()) continue;
        if (auto* a = std::get_if<Array>(&v))
            objects[py::str(std::string(key))] = py::memoryview::from_memory(a->data, py::ssize_t(a->nbytes));
        else if (auto* b = std::get_if<Bytes>(&v))
            objects[py::str(std::string(key))] = py::memoryview::from_memory(b->data.data(), py::ssize_t(b->data.size()));
    }
    py::tuple out = (*python_runner)(py::memoryview::from_memory(payload.data.data(), py::ssize_t(payload.data.size())),
                                     objects);
    auto kind = out[0].cast<std::string>();
    if (kind == "array") return to_array(out[1].cast<py::array>(), "result");
    if (kind == "pickle") return Pickled{out[1].cast<std::string>()};
    if (kind == "value") return to_value(out[1], "result"); // None, bool, int, float, str, bytes (see _runner)
    throw ServiceError(out[1].cast<std::string>(), out[2].cast<std::string>(), out[3].cast<std::string>(),
                       Pickled{out[4].cast<std::string>()});
}

Params to_params(const py::dict& kwargs) {
    Params params;
    for (auto [k, v] : kwargs) {
        auto name = k.cast<std::string>();
        params.set(name, to_value(v, fmt::format("parameter '{}'", name)));
    }
    return params;
}

py::list server_list(const std::vector<ServerInfo>& infos) {
    py::list out;
    for (auto& s : infos) {
        py::dict stats("jobs_done"_a = s.stats.jobs_done, "busy_time"_a = s.stats.busy_time,
                       "last_completion"_a = s.stats.last_completion ? py::cast(s.stats.last_completion) : py::none(),
                       "in_flight"_a = s.stats.in_flight);
        out.append(py::dict("id"_a = s.id, "host"_a = s.host, "pid"_a = s.pid, "lease_expiry"_a = s.lease_expiry,
                            "services"_a = s.services, "statistics"_a = stats));
    }
    return out;
}

// Polls with the GIL released (core threads need it meanwhile), then converts each item under it.
template <class Poll, class Convert> py::list polled(Poll poll, Convert convert) {
    decltype(poll()) items;
    {
        py::gil_scoped_release nogil;
        items = poll();
    }
    py::list out(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) out[i] = convert(items[i]);
    return out;
}

// Live output: (job_id, stream 1|2 (0 on the final chunk), bytes, final), see dynexec.output.
py::object output_item(OutputChunk& c) { return py::make_tuple(c.job_id, c.stream, py::bytes(c.data), c.final); }

// A Python job's parameters: its payload, and the objects it names (key -> a uint8 array: borrowed, not copied).
Params python_params(const py::handle& payload, const py::object& objects) {
    Params params{{"payload", Pickled{payload.cast<std::string>()}}};
    if (objects.is_none()) return params;
    for (auto [k, v] : objects.cast<py::dict>()) {
        auto key = k.cast<std::string>();
        auto name = std::string(1, kObjectPrefix) + key;
        params.set(name, to_array(py::reinterpret_borrow<py::array>(v), fmt::format("object {}", key)));
    }
    return params;
}

// The calls an Executor makes of its engine, in-process (Engine) or remote (Client): one binding for both.
// What a job was, from Python's (function, args, summary, label, tags) texts; null for None.
JobInfoPtr job_info(const py::handle& info) {
    if (info.is_none()) return {};
    auto t = info.cast<std::tuple<std::string, std::string, std::string, std::string, std::string>>();
    return std::make_shared<JobInfo>(JobInfo{std::move(std::get<0>(t)), std::move(std::get<1>(t)),
                                             std::move(std::get<2>(t)), std::move(std::get<3>(t)),
                                             std::move(std::get<4>(t))});
}

// A job's description reaches the archive where the head keeps its jobs: the Engine, or through a Client.
template <class E>
JobId submit_one(E& e, const std::string& service, const Params& params, const std::string& owner, const JobOptions& o,
                 JobInfoPtr info) {
    if constexpr (std::is_same_v<E, Engine>) return e.submit(service, params, owner, o, {}, std::move(info));
    else return e.submit(service, params, owner, o, std::move(info));
}

template <class E>
std::vector<JobId> submit_all(E& e, const std::string& service, const std::vector<Params>& params,
                              const std::string& owner, const JobOptions& o, const std::vector<JobInfoPtr>& infos) {
    return e.submit_many(service, params, owner, o, infos);
}

std::vector<JobInfoPtr> job_infos(const py::object& infos, std::size_t n) {
    std::vector<JobInfoPtr> out;
    if (infos.is_none()) return out;
    auto list = infos.cast<py::list>();
    if (list.size() != n) throw py::value_error(fmt::format("{} job descriptions for {} jobs", list.size(), n));
    out.reserve(n);
    for (auto& i : list) out.push_back(job_info(i));
    return out;
}

template <class E> void def_job_calls(py::class_<E>& cls) {
    cls.def("submit",
            [](E& e, const std::string& service, const py::dict& kwargs, const std::string& owner, double time_limit,
               int retries, const py::object& info) {
                auto params = to_params(kwargs);
                auto i = job_info(info);
                py::gil_scoped_release nogil;
                return submit_one(e, service, params, owner, JobOptions{time_limit, retries}, std::move(i));
            },
            py::arg("service"), py::arg("params"), py::arg("owner"), py::arg("time_limit") = 0.0, py::arg("retries") = 0,
            py::arg("info") = py::none())
        .def("submit_python",
             [](E& e, const py::bytes& payload, const std::string& owner, double time_limit, int retries,
                const py::object& objects, const py::object& info) {
                 Params params = python_params(payload, objects);
                 auto i = job_info(info);
                 py::gil_scoped_release nogil;
                 return submit_one(e, "python", params, owner, JobOptions{time_limit, retries}, std::move(i));
             },
             py::arg("payload"), py::arg("owner"), py::arg("time_limit") = 0.0, py::arg("retries") = 0,
             py::arg("objects") = py::none(), py::arg("info") = py::none())
        .def("submit_many",
             [](E& e, const std::string& service, const py::list& kwargs_list, const std::string& owner,
                double time_limit, int retries, const py::object& infos) {
                 std::vector<Params> params;
                 params.reserve(kwargs_list.size());
                 for (auto& kw : kwargs_list) params.push_back(to_params(kw.cast<py::dict>()));
                 auto i = job_infos(infos, params.size());
                 py::gil_scoped_release nogil;
                 return submit_all(e, service, params, owner, JobOptions{time_limit, retries}, i);
             },
             py::arg("service"), py::arg("params"), py::arg("owner"), py::arg("time_limit") = 0.0, py::arg("retries") = 0,
             py::arg("infos") = py::none())
        .def("submit_python_many",
             [](E& e, const py::list& payloads, const std::string& owner, double time_limit, int retries,
                const py::object& objects, const py::object& infos) {
                 std::vector<Params> params;
                 params.reserve(payloads.size());
                 for (std::size_t i = 0; i < payloads.size(); ++i)
                     params.push_back(python_params(payloads[i], objects.is_none() ? objects : objects[py::int_(i)]));
                 auto i = job_infos(infos, params.size());
                 py::gil_scoped_release nogil;
                 return submit_all(e, "python", params, owner, JobOptions{time_limit, retries}, i);
             },
             py::arg("payloads"), py::arg("owner"), py::arg("time_limit") = 0.0, py::arg("retries") = 0,
             py::arg("objects") = py::none(), py::arg("infos") = py::none())
        .def("release", &E::release, py::arg("keys"), py::call_guard<py::gil_scoped_release>())
        .def("kill", &E::kill, py::call_guard<py::gil_scoped_release>())
        .def("backlog",
             [](E& e) {
                 Backlog b;
                 {
                     py::gil_scoped_release nogil;
                     b = e.backlog();
                 }
                 py::dict waiting;
                 for (auto& w : b.waiting) waiting[py::str(w.service)] = w.jobs;
                 return py::dict("running"_a = b.running, "queued"_a = b.queued, "waiting"_a = waiting);
             })
        .def("state", &E::state, py::call_guard<py::gil_scoped_release>())
        .def("cancel", &E::cancel, py::call_guard<py::gil_scoped_release>())
        .def("cancel_many", &E::cancel_many, py::arg("job_ids"), py::call_guard<py::gil_scoped_release>())
        .def("poll", &E::poll, py::arg("max"), py::arg("timeout"), py::call_guard<py::gil_scoped_release>())
        // The collector's fast path: (job_id, is_pickle, raw value) for a success without output,
        // (job_id, None, Result) otherwise.
        .def(
            "poll_values",
            [](E& e, std::size_t max, std::chrono::milliseconds timeout) {
                return polled([&] { return e.poll(max, timeout); }, collector_item);
            },
            py::arg("max"), py::arg("timeout"))
        // A caller of future.result() takes its job's result itself (engine/result_queue.hpp).
        .def("expect", &E::expect, py::arg("job_id"), py::call_guard<py::gil_scoped_release>())
        .def(
            "await_result",
            [](E& e, const std::string& id, std::chrono::milliseconds timeout) -> py::object {
                std::optional<Result> r;
                {
                    py::gil_scoped_release nogil;
                    r = e.await(id, timeout);
                }
                return r ? collector_item(*r) : py::none();
            },
            py::arg("job_id"), py::arg("timeout"))
        .def("forget", &E::forget, py::arg("job_id"), py::call_guard<py::gil_scoped_release>())
        .def("servers",
             [](E& e) {
                 std::vector<ServerInfo> infos;
                 {
                     py::gil_scoped_release nogil;
                     infos = e.servers();
                 }
                 return server_list(infos);
             })
        .def("shutdown", &E::shutdown, py::arg("wait"), py::arg("cancel_pending"),
             py::call_guard<py::gil_scoped_release>());
}

} // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "dynexec's C++ core";
    py::tuple dtypes(std::size(kArrayDtypes));
    for (std::size_t i = 0; i < std::size(kArrayDtypes); ++i) dtypes[i] = py::str(std::string(kArrayDtypes[i]));
    m.attr("array_dtypes") = dtypes; // the one list (value.hpp), for results.read_archive
    m.attr("OBJECT_KEY_SIZE") = kObjectKeySize; // hex digits of an object key (common/objects.hpp)

    auto invalid = py::register_exception<InvalidJob>(m, "InvalidJobError", PyExc_ValueError);
    py::register_exception<UnknownService>(m, "UnknownServiceError", invalid.ptr());
    py::register_exception<ArchiveError>(m, "ArchiveError", PyExc_OSError);
    py::register_exception<ShutDown>(m, "ShutDownError", PyExc_RuntimeError);

    python_runner = new py::object(py::module_::import("dynexec._runner").attr("run")); // never freed: used until exit
    ServiceCatalog::process().add({"python", "Runs a pickled Python callable (fn, args, kwargs) under the GIL",
                                   {{"payload", ValueType::pickled, std::nullopt, "cloudpickle of (fn, args, kwargs)"}},
                                   run_python});

    py::class_<Result>(m, "Result")
        .def_property_readonly("job_id", [](const Result& r) { return text(r.job_id); })
        .def_property_readonly("status", [](const Result& r) { return std::string(status_name(r.status)); })
        .def_property_readonly("raw_value", [](const Result& r) { return from_value(r.value); })
        .def_property_readonly("value_kind", [](const Result& r) { return std::string(value_kind(r.value)); })
        .def_property_readonly("error_type", [](const Result& r) { return text(r.error_type); })
        .def_property_readonly("message", [](const Result& r) { return text(r.message); })
        .def_property_readonly("traceback", [](const Result& r) { return text(r.traceback); })
        .def_property_readonly("owner", [](const Result& r) { return text(r.owner); })
        .def_property_readonly("service", [](const Result& r) { return text(r.service); })
        .def_property_readonly("server", [](const Result& r) { return text(r.server); })
        .def_readonly("submit_time", &Result::submit_time)
        .def_readonly("start_time", &Result::start_time)
        .def_readonly("end_time", &Result::end_time)
        .def_readonly("attempts", &Result::attempts)
        .def_property_readonly("location", [](const Result& r) { return text(r.location); })
        .def_property_readonly("stdout", [](const Result& r) { return text(r.captured_stdout); })
        .def_property_readonly("function", [](const Result& r) { return r.info ? text(r.info->function) : py::str(""); })
        .def_property_readonly("args", [](const Result& r) { return r.info ? text(r.info->args) : py::str(""); })
        .def_property_readonly("summary", [](const Result& r) { return r.info ? text(r.info->summary) : py::str(""); })
        .def_property_readonly("label", [](const Result& r) { return r.info ? text(r.info->label) : py::str(""); })
        .def_property_readonly("tags", [](const Result& r) { return r.info ? text(r.info->tags) : py::str(""); })
        .def_property_readonly("stderr", [](const Result& r) { return text(r.captured_stderr); });

    py::class_<Engine> engine(m, "Engine");
    def_job_calls(engine);
    engine
        .def(py::init([](int servers, unsigned slots, unsigned threads, std::string policy,
                         std::optional<std::filesystem::path> archive, double lease, double renew, int max_attempts,
                         std::uint64_t seed, std::optional<py::dict> listen, const std::string& archive_mode) {
                 if (archive_mode != "owner" && archive_mode != "group")
                     throw py::value_error(fmt::format("archive_mode must be \"owner\" or \"group\", got '{}'",
                                                       archive_mode));
                 std::optional<remote::HubOptions> hub;
                 if (listen)
                     hub = remote::HubOptions{listen_arg(*listen, "bind", false),
                                              {listen_arg(*listen, "server_public_key", true),
                                               listen_arg(*listen, "server_secret_key", true)},
                                              listen_arg(*listen, "client_public_key", true),
                                              listen_arg(*listen, "compute_public_key", true)};
                 if (hub && hub->client_public_key == hub->compute_server_public_key)
                     throw py::value_error("listen: compute_public_key and client_public_key must differ (one key "
                                           "for both roles would let every client register as a compute server)");
                 py::gil_scoped_release nogil;
                 EngineOptions o{servers, slots, threads, std::move(policy), std::move(archive), lease, renew,
                                 max_attempts, seed, std::move(hub)};
                 o.archive_access = archive_mode == "group" ? ArchiveAccess::group : ArchiveAccess::owner;
                 return new Engine(std::move(o));
             }),
             py::arg("servers"), py::arg("slots_per_server"), py::arg("threads_per_server"), py::arg("policy"),
             py::arg("archive"), py::arg("lease_seconds"), py::arg("renew_seconds"), py::arg("max_attempts"),
             py::arg("seed"), py::arg("listen") = py::none(), py::arg("archive_mode") = "owner")
        .def("set_session_info", &Engine::set_session_info, py::arg("info"), py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("endpoint", &Engine::endpoint)
        .def("wait_for_servers", &Engine::wait_for_servers, py::call_guard<py::gil_scoped_release>())
        .def("wait_shutdown_request", &Engine::wait_shutdown_request, py::call_guard<py::gil_scoped_release>())
        .def("add_server", &Engine::add_server, py::arg("slots") = 1, py::arg("threads") = 0,
             py::call_guard<py::gil_scoped_release>())
        .def("stop_renewing", &Engine::stop_renewing, py::call_guard<py::gil_scoped_release>())
        .def("add_balancer", &Engine::add_balancer, py::call_guard<py::gil_scoped_release>())
        .def("balancers", &Engine::balancers, py::call_guard<py::gil_scoped_release>())
        .def("remove_server", &Engine::remove_server, py::call_guard<py::gil_scoped_release>())
        .def("refresh_services", &Engine::refresh_services, py::call_guard<py::gil_scoped_release>())
        .def("load_plugin", &Engine::load_plugin, py::arg("path"), py::arg("names"), py::arg("timeout"),
             py::call_guard<py::gil_scoped_release>())
        .def("find", &Engine::find, py::call_guard<py::gil_scoped_release>())
        .def("fail_pending", &Engine::fail_pending, py::call_guard<py::gil_scoped_release>())
        .def("server_exited", &Engine::server_exited, py::call_guard<py::gil_scoped_release>())
        .def("set_echo", &Engine::set_echo, py::arg("on"), py::call_guard<py::gil_scoped_release>())
        // Live output: [(job_id, stream 1|2 (0 on the final chunk), bytes, final)], see dynexec.output.
        .def(
            "poll_output",
            [](Engine& e, std::size_t max, std::chrono::milliseconds timeout) {
                return polled([&] { return e.poll_output(max, timeout); }, output_item);
            },
            py::arg("max"), py::arg("timeout"))
        .def_property_readonly("output_dropped", &Engine::output_dropped)
        .def("stats",
             [](const Engine& e) {
                 auto s = e.stats();
                 return py::dict("submitted"_a = s.submitted, "delivered"_a = s.delivered,
                                 "dispatched"_a = s.dispatched, "redispatched"_a = s.redispatched, "stolen"_a = s.stolen,
                                 "lost"_a = s.lost, "stale"_a = s.stale, "outstanding"_a = s.outstanding,
                                 "archive_error"_a = s.archive_error, "objects_sent"_a = s.objects_sent,
                                 "objects_held"_a = s.objects_held);
             })
        .def_property_readonly("session", &Engine::session)
        .def_property_readonly("archive", &Engine::archive);

    py::class_<remote::Client> client(m, "Client");
    def_job_calls(client);
    client
        .def(py::init([](py::object endpoint, py::object server_public, py::object client_public,
                         py::object client_secret, double timeout) {
                 remote::ClientOptions o{conn_arg(endpoint, "endpoint", false),
                                         conn_arg(server_public, "server_public_key", true),
                                         {conn_arg(client_public, "client_public_key", true),
                                          conn_arg(client_secret, "client_secret_key", true)},
                                         timeout};
                 py::gil_scoped_release nogil;
                 return new remote::Client(std::move(o));
             }),
             py::arg("endpoint"), py::arg("server_public_key"), py::arg("client_public_key"),
             py::arg("client_secret_key"), py::arg("timeout") = 10.0)
        .def("shutdown_cluster", &remote::Client::shutdown_cluster, py::call_guard<py::gil_scoped_release>())
        .def("set_echo", &remote::Client::set_echo, py::arg("on"), py::call_guard<py::gil_scoped_release>())
        .def(
            "poll_output",
            [](remote::Client& c, std::size_t max, std::chrono::milliseconds timeout) {
                return polled([&] { return c.poll_output(max, timeout); }, output_item);
            },
            py::arg("max"), py::arg("timeout"))
        .def("stats", [](const remote::Client& c) {
            return py::dict("submitted"_a = c.submitted(), "delivered"_a = c.delivered());
        });

    py::class_<remote::ServerHost>(m, "ServerHost")
        .def(py::init([](py::object endpoint, py::object server_public, py::object compute_public,
                         py::object compute_secret, unsigned slots, unsigned threads, int parent_pid,
                         double head_timeout, int replaces_pid, std::string replaced_because, bool capture_output) {
                 return new remote::ServerHost({conn_arg(endpoint, "endpoint", false),
                                                conn_arg(server_public, "server_public_key", true),
                                                {conn_arg(compute_public, "compute_public_key", true),
                                                 conn_arg(compute_secret, "compute_secret_key", true)},
                                                slots, threads, parent_pid, head_timeout, replaces_pid,
                                                std::move(replaced_because), capture_output});
             }),
             // The compute-server role's key pair (a server join file's), not the clients'.
             py::arg("endpoint"), py::arg("server_public_key"), py::arg("compute_public_key"),
             py::arg("compute_secret_key"), py::arg("slots") = 1, py::arg("threads") = 0, py::arg("parent_pid") = 0,
             py::arg("head_timeout") = 10.0, py::arg("replaces_pid") = 0, py::arg("replaced_because") = "",
             // A server process (python -m dynexec.server) is a process of its own: it captures its jobs' output.
             py::arg("capture_output") = true)
        .def("run", &remote::ServerHost::run, py::call_guard<py::gil_scoped_release>())
        .def("stop", &remote::ServerHost::stop)
        .def_property_readonly("id", &remote::ServerHost::id)
        .def_property_readonly("jobs_done", &remote::ServerHost::jobs_done);

    m.def("curve_keypair", [] {
        auto k = wire::CurveKeys::generate();
        return py::make_tuple(k.public_key, k.secret_key);
    });

    // For dynexec._runner's per-thread sys.stdout/sys.stderr: whether this thread runs a job whose output is
    // captured, and a write to that job's stream (1 or 2); false when there is none. Keeps the GIL: cheap.
    m.def("_job_capturing", [] { return JobOutput::current() != nullptr; });
    m.def("_job_write", [](int stream, const py::bytes& data) {
        auto* out = JobOutput::current();
        if (!out) return false;
        out->write(stream, std::string_view(PyBytes_AS_STRING(data.ptr()), std::size_t(PyBytes_GET_SIZE(data.ptr()))));
        return true;
    });
    m.def("find", &ResultsFinder::find, py::arg("archive"), py::arg("job_id"), py::call_guard<py::gil_scoped_release>());
    m.def("archive_damaged_rows", &ResultsArchive::damaged_rows, py::arg("file"), py::call_guard<py::gil_scoped_release>());
    m.def("load_services",
          [](const std::string& path) { return ServiceCatalog::process().load_plugin(path); },
          py::call_guard<py::gil_scoped_release>());
    m.def("services", [] {
        py::dict out;
        for (auto& s : ServiceCatalog::process().all()) {
            py::list params;
            for (auto& p : s->params)
                params.append(py::dict("name"_a = p.name, "type"_a = std::string(type_name(p.type)),
                                       "default"_a = p.default_value ? from_value(*p.default_value) : py::none(),
                                       "required"_a = !p.default_value, "doc"_a = p.doc));
            out[py::str(s->name)] = py::dict("doc"_a = s->doc, "params"_a = params);
        }
        return out;
    });
    m.attr("POLICIES") = py::cast(std::vector<std::string>(policy_names().begin(), policy_names().end()));
}
