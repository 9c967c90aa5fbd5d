// Tests of the service catalog, parameter validation, the built-in services
// and plugin loading (the example plugin, found through DYNEXEC_EXAMPLE_PLUGIN).
#include "services/catalog.hpp"

#include "common/errors.hpp"
#include "server/output_capture.hpp"

#include <gtest/gtest.h>
#include <tbb/task_arena.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numbers>
#include <thread>
#include <string>
#include <vector>

namespace dynexec {
namespace {

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
    if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}
#define EXPECT_CONTAINS(text, part) EXPECT_TRUE(contains(text, part))

// A catalog of the built-ins alone, shared by the tests (the catalog is thread-safe).
ServiceCatalog& builtins() {
    static ServiceCatalog* catalog = [] {
        auto* c = new ServiceCatalog();
        register_builtin_services(*c);
        return c;
    }();
    return *catalog;
}

Value call(ServiceCatalog& catalog, const std::string& name, const Params& params) {
    ServicePtr def = catalog.find(name);
    if (!def) throw std::logic_error("no service " + name);
    return def->fn(validate_params(*def, params));
}
Value call(const std::string& name, const Params& params) { return call(builtins(), name, params); }

// The message of the exception `f` throws as E; fails the test if it throws nothing.
template <class E, class F> std::string message_of(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected an exception";
    return {};
}

template <class T> Array make_array(std::vector<T> values, std::vector<std::int64_t> shape) {
    auto [a, data] = Array::allocate<T>(std::move(shape));
    EXPECT_EQ(data.size(), values.size());
    std::copy(values.begin(), values.end(), data.begin());
    return a;
}

// Runs `f` on an arena of `threads` threads and returns what it returns.
template <class F> auto in_arena(int threads, F&& f) {
    tbb::task_arena arena(threads);
    return arena.execute(std::forward<F>(f));
}

Params market(std::string kind) {
    return {{"spot", 100.0}, {"strike", 105.0}, {"rate", 0.05}, {"volatility", 0.2}, {"maturity", 1.0},
            {"kind", std::move(kind)}};
}

Params with(Params p, std::string name, Value v) {
    p.set(std::move(name), std::move(v));
    return p;
}

ServiceDef def_named(std::string name) {
    return {std::move(name), "doc", {}, [](const Params&) -> Value { return std::int64_t{7}; }};
}

// ---- catalog -----------------------------------------------------------------

TEST(ServiceCatalog, AddsAndFindsInOrder) {
    ServiceCatalog c;
    EXPECT_EQ(c.version(), 0u);
    c.add(def_named("b.second"));
    c.add(def_named("a.first"));
    EXPECT_EQ(c.version(), 2u);
    ASSERT_NE(c.find("a.first"), nullptr);
    EXPECT_EQ(c.find("a.first")->name, "a.first");
    EXPECT_EQ(std::get<std::int64_t>(c.find("b.second")->fn({})), 7);
    EXPECT_EQ(c.find("c.absent"), nullptr);
    auto all = c.all();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0]->name, "b.second");
    EXPECT_EQ(all[1]->name, "a.first");
}

TEST(ServiceCatalog, RejectsDuplicateName) {
    ServiceCatalog c;
    c.add(def_named("x.once"));
    auto msg = message_of<std::invalid_argument>([&] { c.add(def_named("x.once")); });
    EXPECT_CONTAINS(msg, "'x.once' is already registered");
    EXPECT_EQ(c.version(), 1u);
}

TEST(ServiceCatalog, RejectsBadNameAndMissingFunction) {
    ServiceCatalog c;
    EXPECT_CONTAINS(message_of<std::invalid_argument>([&] { c.add(def_named("")); }), "invalid service name");
    EXPECT_CONTAINS(message_of<std::invalid_argument>([&] { c.add(def_named("has space")); }),
                "invalid service name 'has space'");
    EXPECT_CONTAINS(message_of<std::invalid_argument>([&] { c.add({"no.fn", "doc", {}, nullptr}); }),
                "'no.fn' has no function");
    EXPECT_EQ(c.version(), 0u);
}

TEST(ServiceCatalog, ProcessCatalogHasTheBuiltins) {
    for (auto name : {"pi.monte_carlo", "option.european", "option.black_scholes", "spin.cpu", "noop", "array.sum",
                      "array.scale", "command"}) {
        auto def = ServiceCatalog::process().find(name);
        ASSERT_NE(def, nullptr) << name;
        EXPECT_FALSE(def->doc.empty()) << name;
    }
}

// ---- validate_params -----------------------------------------------------------

TEST(ValidateParams, UnknownParameterIsNamedWithTheKnownOnes) {
    auto def = builtins().find("pi.monte_carlo");
    auto msg = message_of<InvalidJob>([&] { validate_params(*def, {{"sample", std::int64_t{10}}}); });
    EXPECT_CONTAINS(msg, "no parameter 'sample'");
    EXPECT_CONTAINS(msg, "samples, seed");
}

TEST(ValidateParams, MissingRequiredParameter) {
    auto def = builtins().find("option.black_scholes");
    Params p = market("call");
    Params without_spot;
    for (auto& [k, v] : p)
        if (k != "spot") without_spot.set(k, v);
    EXPECT_CONTAINS(message_of<InvalidJob>([&] { validate_params(*def, without_spot); }),
                "needs parameter 'spot' (float)");
}

TEST(ValidateParams, WrongTypeIsNamed) {
    auto def = builtins().find("option.black_scholes");
    EXPECT_CONTAINS(message_of<InvalidJob>([&] { validate_params(*def, with(market("call"), "spot", std::string("100"))); }),
                "parameter 'spot' must be float, not str");
    EXPECT_CONTAINS(message_of<InvalidJob>(
                    [&] { validate_params(*builtins().find("pi.monte_carlo"), {{"samples", 1.5}}); }),
                "parameter 'samples' must be int, not float");
}

TEST(ValidateParams, WidensIntToFloatAndFillsDefaults) {
    auto def = builtins().find("option.european");
    Params given = {{"maturity", 1.0}, {"volatility", 0.2}, {"rate", 0.05}, {"strike", std::int64_t{105}},
                    {"spot", std::int64_t{100}}};
    Params p = validate_params(*def, given);
    EXPECT_EQ(p.get<double>("spot"), 100.0);
    EXPECT_EQ(p.get<double>("strike"), 105.0);
    EXPECT_EQ(p.get<std::string>("kind"), "call");
    EXPECT_EQ(p.get<std::int64_t>("samples"), 1'000'000);
    EXPECT_EQ(p.get<std::int64_t>("seed"), 0);
    // In the service's declared order.
    std::vector<std::string> names;
    for (auto& [k, v] : p) names.push_back(k);
    EXPECT_EQ(names, (std::vector<std::string>{"spot", "strike", "rate", "volatility", "maturity", "kind", "samples", "seed"}));
}

// ---- pi.monte_carlo ------------------------------------------------------------

TEST(PiMonteCarlo, IsAccurate) {
    double pi = std::get<double>(call("pi.monte_carlo", {{"samples", std::int64_t{1'000'000}}, {"seed", std::int64_t{1}}}));
    EXPECT_NEAR(pi, std::numbers::pi, 0.01);
}

TEST(PiMonteCarlo, DependsOnlyOnTheSeed) {
    auto run = [](std::int64_t samples, std::int64_t seed) {
        return std::get<double>(call("pi.monte_carlo", {{"samples", samples}, {"seed", seed}}));
    };
    EXPECT_EQ(run(300'000, 42), run(300'000, 42));
    EXPECT_NE(run(300'000, 42), run(300'000, 43));
    // Whatever the number of threads, including a sample count that leaves a partial block.
    for (std::int64_t samples : {std::int64_t{300'000}, std::int64_t{1'000}}) {
        double one = in_arena(1, [&] { return run(samples, 7); });
        double two = in_arena(2, [&] { return run(samples, 7); });
        EXPECT_EQ(one, two) << samples;
    }
}

TEST(PiMonteCarlo, RejectsNonPositiveSamples) {
    EXPECT_EQ(message_of<std::invalid_argument>([] { call("pi.monte_carlo", {{"samples", std::int64_t{0}}}); }),
              "samples must be positive, got 0");
    EXPECT_EQ(message_of<std::invalid_argument>([] { call("pi.monte_carlo", {{"samples", std::int64_t{-5}}}); }),
              "samples must be positive, got -5");
}

// ---- options -------------------------------------------------------------------

double black_scholes(const std::string& kind) { return std::get<double>(call("option.black_scholes", market(kind))); }

TEST(BlackScholes, KnownPricesAndPutCallParity) {
    double c = black_scholes("call"), p = black_scholes("put");
    EXPECT_NEAR(c, 8.0214, 1e-3);
    EXPECT_NEAR(p, 7.9004, 1e-3);
    EXPECT_NEAR(c - p, 100.0 - 105.0 * std::exp(-0.05), 1e-10); // C - P = S - K e^{-rT}
}

std::pair<double, double> european(const std::string& kind, std::int64_t samples, std::int64_t seed) {
    auto a = std::get<Array>(call("option.european", with(with(market(kind), "samples", samples), "seed", seed)));
    EXPECT_EQ(a.dtype, "f8");
    EXPECT_EQ(a.shape, std::vector<std::int64_t>{2});
    auto v = a.view<double>();
    return {v[0], v[1]};
}

TEST(OptionEuropean, MatchesTheClosedForm) {
    for (std::string kind : {"call", "put"}) {
        auto [price, se] = european(kind, 400'000, 3);
        double exact = black_scholes(kind);
        EXPECT_GT(se, 0.0) << kind;
        EXPECT_LT(se, 0.05) << kind;
        EXPECT_LE(std::abs(price - exact), 3 * se) << kind << " price " << price << " exact " << exact << " se " << se;
        EXPECT_LE(std::abs(price - exact), 0.01 * exact) << kind;
    }
}

TEST(OptionEuropean, DependsOnlyOnTheSeed) {
    auto one = in_arena(1, [] { return european("call", 100'001, 5); });
    auto two = in_arena(2, [] { return european("call", 100'001, 5); });
    EXPECT_EQ(one, two);
    EXPECT_NE(european("call", 100'001, 5).first, european("call", 100'001, 6).first);
}

TEST(OptionEuropean, RejectsBadMarketParameters) {
    auto msg = [](const std::string& name, Value v) {
        return message_of<std::invalid_argument>(
            [&] { call("option.european", with(with(market("call"), "samples", std::int64_t{1000}), name, v)); });
    };
    EXPECT_EQ(msg("spot", -1.0), "spot must be a positive number, got -1");
    EXPECT_EQ(msg("strike", 0.0), "strike must be a positive number, got 0");
    EXPECT_EQ(msg("volatility", 0.0), "volatility must be a positive number, got 0");
    EXPECT_EQ(msg("maturity", -0.5), "maturity must be a positive number, got -0.5");
    EXPECT_EQ(msg("kind", std::string("straddle")), "kind must be 'call' or 'put', got 'straddle'");
    EXPECT_CONTAINS(msg("samples", std::int64_t{1}), "samples must be at least 4");
    EXPECT_EQ(message_of<std::invalid_argument>([] { call("option.black_scholes", with(market("call"), "kind", std::string("Call"))); }),
              "kind must be 'call' or 'put', got 'Call'");
    EXPECT_EQ(message_of<std::invalid_argument>([] { call("option.black_scholes", with(market("put"), "spot", 0.0)); }),
              "spot must be a positive number, got 0");
}

// ---- command ---------------------------------------------------------------------------

Bytes nul_joined(std::initializer_list<std::string> parts) {
    std::string s;
    for (auto& p : parts) s += p + '\0';
    return Bytes{s};
}

// Runs `command` with its output captured as a compute server captures it; returns the Result's texts.
Result run_captured(const Params& params, const std::atomic<bool>* stop = nullptr) {
    Result r;
    JobOutput out("job", JobOutput::kDefaultLimit);
    JobOutput::Scope scope(&out);
    auto def = builtins().find("command");
    auto p = validate_params(*def, params);
    p.watch_stop(stop);
    try {
        r.value = def->fn(p);
    } catch (const ServiceError& e) {
        r.status = Status::error;
        r.error_type = e.type;
        r.message = e.what();
        r.value = e.payload;
    }
    out.finish(r);
    return r;
}

TEST(Command, SuccessCapturesBothStreamsAndUsesEnvAndCwd) {
    auto r = run_captured({{"argv", nul_joined({"sh", "-c", "echo out $X; pwd; echo err >&2"})},
                           {"env", nul_joined({"X=from-env"})},
                           {"cwd", std::string("/tmp")}});
    EXPECT_EQ(r.status, Status::ok);
    EXPECT_EQ(std::get<std::int64_t>(r.value), 0);
    EXPECT_EQ(r.captured_stdout, "out from-env\n/tmp\n");
    EXPECT_EQ(r.captured_stderr, "err\n");
}

TEST(Command, NonZeroExitIsACommandErrorWithTheCode) {
    auto r = run_captured({{"argv", nul_joined({"sh", "-c", "echo partial; exit 3"})}});
    EXPECT_EQ(r.status, Status::error);
    EXPECT_EQ(r.error_type, "CommandError");
    EXPECT_CONTAINS(r.message, "exited with code 3");
    EXPECT_CONTAINS(r.message, "sh -c");
    EXPECT_EQ(std::get<std::int64_t>(r.value), 3);
    EXPECT_EQ(r.captured_stdout, "partial\n");
}

TEST(Command, MissingProgramAndEmptyArgv) {
    auto r = run_captured({{"argv", nul_joined({"/nonexistent/dynexec-no-such-program"})}});
    EXPECT_EQ(r.error_type, "CommandError");
    EXPECT_CONTAINS(r.message, "cannot run /nonexistent/dynexec-no-such-program");
    EXPECT_EQ(std::get<std::int64_t>(r.value), 127);
    EXPECT_CONTAINS(message_of<std::invalid_argument>([] { call("command", {{"argv", Bytes{}}}); }),
                    "argv must name a program");
}

TEST(Command, StopRequestEndsTheWholeProcessGroup) {
    std::atomic<bool> stop{false};
    std::thread stopper([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        stop = true;
    });
    // The grandchild (sleep) holds the pipes open: the command ends only once the whole group is gone.
    auto r = run_captured({{"argv", nul_joined({"sh", "-c", "sleep 30 & wait"})}}, &stop);
    stopper.join();
    EXPECT_EQ(r.status, Status::error);
    EXPECT_CONTAINS(r.message, "signal 15 (SIGTERM)");
    EXPECT_EQ(std::get<std::int64_t>(r.value), -15);
}

// ---- spin.cpu and noop ---------------------------------------------------------------

TEST(SpinCpu, TakesAboutTheRequestedTime) {
    auto t0 = std::chrono::steady_clock::now();
    auto iterations = std::get<std::int64_t>(call("spin.cpu", {{"seconds", 0.05}}));
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GT(iterations, 0);
    EXPECT_GE(wall, 0.03);
    EXPECT_LE(wall, 0.5);
}

TEST(SpinCpu, ZeroAndNegative) {
    EXPECT_EQ(std::get<std::int64_t>(call("spin.cpu", {{"seconds", std::int64_t{0}}})), 0);
    EXPECT_EQ(message_of<std::invalid_argument>([] { call("spin.cpu", {{"seconds", -1.0}}); }),
              "seconds must be a non-negative number, got -1");
}

TEST(Noop, ReturnsItsInputUnchanged) {
    EXPECT_TRUE(std::holds_alternative<std::monostate>(call("noop", {})));
    EXPECT_EQ(std::get<std::string>(call("noop", {{"x", std::string("hello")}})), "hello");
    const Bytes raw{std::string("\0\1", 2)};
    EXPECT_EQ(std::get<Bytes>(call("noop", {{"x", raw}})).data.size(), 2u);
    EXPECT_EQ(std::get<Bytes>(call("noop", {{"x", raw}})), raw);
    Array a = make_array<double>({1, 2}, {2});
    EXPECT_EQ(std::get<Array>(call("noop", {{"x", a}})).data, a.data); // the same buffer, not a copy
}

// ---- arrays -----------------------------------------------------------------------

TEST(ArraySum, SumsEverySupportedDtype) {
    EXPECT_EQ(std::get<double>(call("array.sum", {{"a", make_array<double>({1.5, 2.5, -1}, {3})}})), 3.0);
    EXPECT_EQ(std::get<double>(call("array.sum", {{"a", make_array<float>({0.5f, 0.25f, 1, 2}, {2, 2})}})), 3.75);
    EXPECT_EQ(std::get<double>(call("array.sum", {{"a", make_array<std::int64_t>({1, -2, 3'000'000'000}, {3})}})),
              2'999'999'999.0);
    EXPECT_EQ(std::get<double>(call("array.sum", {{"a", make_array<std::int32_t>({4, 5, 6}, {1, 3})}})), 15.0);
    EXPECT_EQ(std::get<double>(call("array.sum", {{"a", make_array<double>({}, {0})}})), 0.0);

    // Large enough to run in parallel; integers keep the expected sum exact.
    std::vector<double> big(1'000'000);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<double>(i % 1000);
    Array a = make_array<double>(big, {1000, 1000});
    EXPECT_EQ(std::get<double>(call("array.sum", {{"a", a}})), 1000.0 * 499'500.0);
}

TEST(ArraySum, RejectsOtherDtypes) {
    EXPECT_EQ(message_of<std::invalid_argument>([] { call("array.sum", {{"a", make_array<std::uint8_t>({1, 2}, {2})}}); }),
              "array.sum supports dtypes f8, f4, i8 and i4, not 'u1'");
    EXPECT_CONTAINS(message_of<InvalidJob>([] { call("array.sum", {{"a", 1.0}}); }),
                "parameter 'a' must be ndarray, not float");
}

TEST(ArrayScale, ScalesIntoANewArrayOfTheSameShape) {
    std::vector<double> values(100'000);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i) - 5.0;
    Array in = make_array<double>(values, {1000, 100});
    auto out = std::get<Array>(call("array.scale", {{"a", in}, {"factor", std::int64_t{3}}}));
    EXPECT_EQ(out.dtype, "f8");
    EXPECT_EQ(out.shape, (std::vector<std::int64_t>{1000, 100}));
    EXPECT_NE(out.data, in.data);
    auto o = out.view<double>();
    auto i = in.view<double>();
    ASSERT_EQ(o.size(), values.size());
    for (std::size_t k = 0; k < values.size(); ++k) {
        ASSERT_EQ(i[k], values[k]) << "input modified at " << k;
        ASSERT_EQ(o[k], 3.0 * values[k]) << k;
    }
}

TEST(ArrayScale, RejectsNonFloat64) {
    EXPECT_EQ(message_of<std::invalid_argument>(
                  [] { call("array.scale", {{"a", make_array<float>({1, 2}, {2})}, {"factor", 2.0}}); }),
              "array.scale needs dtype f8, not 'f4'");
}

// ---- plugins -----------------------------------------------------------------------

TEST(Plugin, LoadsTheExampleAndRunsIt) {
    const char* path = std::getenv("DYNEXEC_EXAMPLE_PLUGIN");
    if (!path || !*path) GTEST_SKIP() << "DYNEXEC_EXAMPLE_PLUGIN is not set";
    ServiceCatalog c;
    auto names = c.load_plugin(path);
    EXPECT_EQ(names, (std::vector<std::string>{"example.integrate", "example.histogram"}));

    double integral = std::get<double>(call(c, "example.integrate", {{"a", std::int64_t{0}}, {"b", std::numbers::pi},
                                                                     {"intervals", std::int64_t{100'000}}}));
    EXPECT_NEAR(integral, 2.0, 1e-8);

    auto counts = std::get<Array>(call(c, "example.histogram", {{"a", make_array<double>({0, 0.1, 0.5, 0.9, 1.0, 1.0}, {6})},
                                                                 {"bins", std::int64_t{2}}}));
    EXPECT_EQ(counts.dtype, "i8");
    auto v = counts.view<std::int64_t>();
    EXPECT_EQ(std::vector<std::int64_t>(v.begin(), v.end()), (std::vector<std::int64_t>{2, 4}));

    EXPECT_CONTAINS(message_of<std::invalid_argument>([&] { call(c, "example.integrate", {{"a", 0.0}, {"b", 1.0}, {"intervals", std::int64_t{0}}}); }),
                "intervals must be positive");

    // Loading the same file again is a no-op that names what it offers.
    EXPECT_EQ(c.load_plugin(path), (std::vector<std::string>{"example.integrate", "example.histogram"}));
    EXPECT_EQ(c.version(), 2u);
}

TEST(Plugin, RefusesALibraryWithoutTheEntryPoint) {
    ServiceCatalog c;
    auto msg = message_of<std::invalid_argument>([&] { c.load_plugin("/lib/x86_64-linux-gnu/libm.so.6"); });
    EXPECT_CONTAINS(msg, "dynexec_register_services");
    EXPECT_CONTAINS(msg, "libm.so.6");
    EXPECT_EQ(c.version(), 0u);
}

TEST(Plugin, MissingFileNamesThePath) {
    ServiceCatalog c;
    auto msg = message_of<std::invalid_argument>([&] { c.load_plugin("/nonexistent/dir/libnope.so"); });
    EXPECT_CONTAINS(msg, "/nonexistent/dir/libnope.so");
}

} // namespace
} // namespace dynexec
