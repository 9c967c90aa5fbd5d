// Array services: array.sum and array.scale. Inputs are read in place
// (a numpy array passed from Python is borrowed, never copied).
#include "services/builtin/builtin.hpp"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_reduce.h>

namespace dynexec::builtin {
namespace {

constexpr std::size_t kGrain = 1 << 14; // elements per task

// An array whose buffer is too small for its shape would be read out of bounds.
const Array& checked(const Array& a) {
    if (a.size() > 0 && (a.data == nullptr || a.nbytes < a.size() * a.itemsize()))
        throw std::invalid_argument(fmt::format("array of dtype '{}' has {} bytes, too few for {} elements", a.dtype,
                                                a.nbytes, a.size()));
    return a;
}

// Deterministic: the same array always gives the same bits, whatever the thread count.
template <class T> double sum_of(std::span<const T> v) {
    return tbb::parallel_deterministic_reduce(
        tbb::blocked_range<std::size_t>(0, v.size(), kGrain), 0.0,
        [&](const tbb::blocked_range<std::size_t>& r, double acc) {
            for (std::size_t i = r.begin(); i != r.end(); ++i) acc += static_cast<double>(v[i]);
            return acc;
        },
        [](double a, double b) { return a + b; });
}

Value array_sum(const Params& p) {
    const Array& a = checked(p.get<Array>("a"));
    if (a.dtype == "f8") return sum_of(a.view<double>());
    if (a.dtype == "f4") return sum_of(a.view<float>());
    if (a.dtype == "i8") return sum_of(a.view<std::int64_t>());
    if (a.dtype == "i4") return sum_of(a.view<std::int32_t>());
    throw std::invalid_argument(
        fmt::format("array.sum supports dtypes f8, f4, i8 and i4, not '{}'", a.dtype));
}

Value array_scale(const Params& p) {
    const Array& a = checked(p.get<Array>("a"));
    if (a.dtype != "f8") throw std::invalid_argument(fmt::format("array.scale needs dtype f8, not '{}'", a.dtype));
    const double factor = p.get<double>("factor");
    const std::span<const double> in = a.view<double>();
    auto [out_array, out] = Array::allocate<double>(a.shape);
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, in.size(), kGrain), [&](const tbb::blocked_range<std::size_t>& r) {
        for (std::size_t i = r.begin(); i != r.end(); ++i) out[i] = in[i] * factor;
    });
    return std::move(out_array);
}

} // namespace

void add_array_services(ServiceRegistrar& r) {
    r.add({"array.sum", "Sum of all elements of `a` (dtype f8, f4, i8 or i4), accumulated in float64. Returns a float.",
           {{"a", ValueType::array, std::nullopt, "the array"}},
           array_sum});
    r.add({"array.scale", "A new float64 array of the same shape: every element of `a` (dtype f8) times `factor`.",
           {{"a", ValueType::array, std::nullopt, "a float64 array"},
            {"factor", ValueType::real, std::nullopt, "the multiplier"}},
           array_scale});
}

} // namespace dynexec::builtin
