// An example dynexec service plugin: copy this file to start your own.
//
// Build it as a shared library (a CMake MODULE library) with <dynexec/service.hpp>
// on the include path; it links nothing from dynexec, only what it uses itself
// (here oneTBB). Load it from Python with dynexec.load_services("path/to/lib.so"),
// then submit jobs by service name, e.g.
//     executor.submit_service("example.integrate", a=0, b=3.14159)
//
// Rules for a service function:
//  * It receives its parameters already checked against the ParamSpecs below:
//    every declared parameter is present (defaults filled in), with the declared
//    type (an int given for a float parameter arrives as a double).
//  * It may run on several threads at once: keep no unsynchronised shared state.
//  * It runs inside a compute server's oneTBB arena, so tbb::parallel_for and
//    tbb::parallel_reduce use that server's threads and nothing more.
//  * It reports bad input or failure by throwing (e.g. std::invalid_argument);
//    the message reaches the user and the results archive.
//  * Arrays it receives are borrowed (a numpy array is not copied): read them,
//    never write them. Return new arrays made with dynexec::Array::allocate.
#include <dynexec/service.hpp>

#include <tbb/blocked_range.h>
#include <tbb/parallel_reduce.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

using dynexec::Array;
using dynexec::Params;
using dynexec::Value;
using dynexec::ValueType;

namespace {

// Midpoint-rule integral of sin(x) over [a, b] with `intervals` sub-intervals.
Value integrate(const Params& p) {
    const double a = p.get<double>("a");
    const double b = p.get<double>("b");
    const std::int64_t n = p.get<std::int64_t>("intervals");
    if (n <= 0) throw std::invalid_argument("intervals must be positive, got " + std::to_string(n));
    const double h = (b - a) / static_cast<double>(n);

    // parallel_reduce: each task sums a sub-range, partial sums are then added.
    // The order of those additions can differ from run to run, so the last bits
    // of the result may too; use tbb::parallel_deterministic_reduce (same
    // arguments) when results must be bit-for-bit reproducible.
    const double sum = tbb::parallel_reduce(
        tbb::blocked_range<std::int64_t>(0, n), 0.0,
        [&](const tbb::blocked_range<std::int64_t>& r, double acc) {
            for (std::int64_t i = r.begin(); i != r.end(); ++i) acc += std::sin(a + (static_cast<double>(i) + 0.5) * h);
            return acc;
        },
        [](double x, double y) { return x + y; });
    return sum * h; // a double becomes a Python float
}

// Counts of the values of `a` in `bins` equal-width bins spanning [min(a), max(a)]
// (numpy.histogram's default range; NaNs are ignored). Returns an int64 array.
Value histogram(const Params& p) {
    const Array& a = p.get<Array>("a");
    const std::int64_t bins = p.get<std::int64_t>("bins");
    if (bins <= 0 || bins > (std::int64_t{1} << 24))
        throw std::invalid_argument("bins must be between 1 and 16777216, got " + std::to_string(bins));
    if (a.dtype != "f8") throw std::invalid_argument("a must be a float64 array, not dtype '" + a.dtype + "'");
    const auto values = a.view<double>(); // no copy

    // Pass 1: the range.
    using Range = std::pair<double, double>;
    constexpr double inf = std::numeric_limits<double>::infinity();
    auto [lo, hi] = tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, values.size()), Range{inf, -inf},
        [&](const tbb::blocked_range<std::size_t>& r, Range acc) {
            for (std::size_t i = r.begin(); i != r.end(); ++i) {
                if (std::isnan(values[i])) continue;
                acc.first = std::min(acc.first, values[i]);
                acc.second = std::max(acc.second, values[i]);
            }
            return acc;
        },
        [](Range x, Range y) { return Range{std::min(x.first, y.first), std::max(x.second, y.second)}; });
    if (lo > hi) lo = 0, hi = 1;            // no (non-NaN) values: all counts stay 0
    if (lo == hi) lo -= 0.5, hi += 0.5;     // as numpy does for a single value
    if (!std::isfinite(lo) || !std::isfinite(hi)) throw std::invalid_argument("a contains infinite values");

    // Pass 2: the counts. Each task fills its own vector; vectors are then added.
    using Counts = std::vector<std::int64_t>;
    const double scale = static_cast<double>(bins) / (hi - lo);
    Counts counts = tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, values.size()), Counts(static_cast<std::size_t>(bins), 0),
        [&](const tbb::blocked_range<std::size_t>& r, Counts acc) {
            for (std::size_t i = r.begin(); i != r.end(); ++i) {
                if (std::isnan(values[i])) continue;
                auto k = static_cast<std::int64_t>((values[i] - lo) * scale);
                acc[static_cast<std::size_t>(std::clamp<std::int64_t>(k, 0, bins - 1))] += 1; // max goes in the last bin
            }
            return acc;
        },
        [](Counts x, const Counts& y) {
            for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
            return x;
        });

    // A fresh array owned by the returned Value; it reaches Python as a numpy array.
    auto [out, data] = Array::allocate<std::int64_t>({bins});
    std::copy(counts.begin(), counts.end(), data.begin());
    return std::move(out);
}

} // namespace

// The plugin's one exported function: dynexec calls it once, when the plugin is loaded.
// Each service is a name, a doc string, its parameters (name, type, default or
// std::nullopt when required, doc) and the function.
DYNEXEC_SERVICES(registrar) {
    registrar.add({"example.integrate",
                   "Integral of sin(x) over [a, b] by the midpoint rule, in parallel. Returns a float.",
                   {{"a", ValueType::real, std::nullopt, "lower limit"},
                    {"b", ValueType::real, std::nullopt, "upper limit"},
                    {"intervals", ValueType::integer, Value(std::int64_t{1'000'000}), "number of sub-intervals"}},
                   integrate});
    registrar.add({"example.histogram",
                   "Histogram of a float64 array over [min, max] in `bins` equal bins. Returns an int64 array of counts.",
                   {{"a", ValueType::array, std::nullopt, "the values (float64)"},
                    {"bins", ValueType::integer, Value(std::int64_t{10}), "number of bins"}},
                   histogram});
}
