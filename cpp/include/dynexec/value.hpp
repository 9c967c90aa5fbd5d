// Values that travel with a job: parameters in, a result out.
// Header-only so that service plugins need no link-time symbols from the core.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace dynexec {

// The numpy dtypes (kind + item size) an Array may have: the one list, for the decoders and the bindings.
inline constexpr std::string_view kArrayDtypes[] = {"f8", "f4", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1"};

inline bool supported_dtype(std::string_view code) {
    for (auto d : kArrayDtypes)
        if (code == d) return true;
    return false;
}

// An n-dimensional, C-contiguous, native-endian array. `data` stays valid while
// `owner` lives: a numpy array passed in from Python is borrowed, not copied.
struct Array {
    std::string dtype;                 // numpy kind+size, one of kArrayDtypes
    std::vector<std::int64_t> shape;
    std::shared_ptr<const void> owner; // keeps `data` alive
    const void* data = nullptr;
    std::size_t nbytes = 0;

    std::size_t size() const {
        std::size_t n = 1;
        for (auto d : shape) n *= static_cast<std::size_t>(d);
        return n;
    }
    std::size_t itemsize() const { return dtype.size() > 1 ? std::stoul(dtype.substr(1)) : 0; }

    template <class T> std::span<const T> view() const {
        check_type<T>();
        return {static_cast<const T*>(data), size()};
    }

    // A fresh array of `n` elements of T, owned by the returned value.
    template <class T> static std::pair<Array, std::span<T>> allocate(std::vector<std::int64_t> shape) {
        Array a;
        a.dtype = dtype_of<T>();
        a.shape = std::move(shape);
        std::size_t n = a.size();
        std::shared_ptr<T[]> buf(new T[n]);
        a.data = buf.get();
        a.nbytes = n * sizeof(T);
        a.owner = std::shared_ptr<const void>(buf, buf.get());
        return {std::move(a), std::span<T>(buf.get(), n)};
    }

    template <class T> static std::string dtype_of() {
        if constexpr (std::is_same_v<T, double>) return "f8";
        else if constexpr (std::is_same_v<T, float>) return "f4";
        else if constexpr (std::is_same_v<T, bool>) return "b1";
        else if constexpr (std::is_integral_v<T>)
            return std::string(std::is_signed_v<T> ? "i" : "u") + std::to_string(sizeof(T));
        else static_assert(sizeof(T) == 0, "unsupported array element type");
    }

private:
    template <class T> void check_type() const {
        if (dtype != dtype_of<T>())
            throw std::invalid_argument("array has dtype '" + dtype + "', not '" + dtype_of<T>() + "'");
    }
};

// Raw bytes with no meaning to dynexec.
struct Bytes {
    std::string data;
    bool operator==(const Bytes&) const = default;
};

// A Python object serialised with (cloud)pickle: only Python unpickles it.
struct Pickled {
    std::string data;
    bool operator==(const Pickled&) const = default;
};

using Value = std::variant<std::monostate, bool, std::int64_t, double, std::string, Bytes, Pickled, Array>;

// The type a service declares for a parameter.
enum class ValueType { any, boolean, integer, real, string, bytes, pickled, array };

inline std::string_view type_name(ValueType t) {
    switch (t) {
    case ValueType::any: return "any";
    case ValueType::boolean: return "bool";
    case ValueType::integer: return "int";
    case ValueType::real: return "float";
    case ValueType::string: return "str";
    case ValueType::bytes: return "bytes";
    case ValueType::pickled: return "pickle";
    case ValueType::array: return "ndarray";
    }
    return "?";
}

inline ValueType type_of(const Value& v) {
    static constexpr ValueType by_index[] = {ValueType::any,    ValueType::boolean, ValueType::integer, ValueType::real,
                                             ValueType::string, ValueType::bytes,   ValueType::pickled, ValueType::array};
    return v.index() == 0 ? ValueType::any : by_index[v.index()];
}

inline std::string_view type_name(const Value& v) { return v.index() == 0 ? "None" : type_name(type_of(v)); }

// Named parameters of one job, in the order the service declares them once validated.
class Params {
public:
    Params() = default;
    Params(std::initializer_list<std::pair<std::string, Value>> init) : items_(init) {}

    void set(std::string name, Value v) {
        for (auto& [k, old] : items_)
            if (k == name) { old = std::move(v); return; }
        items_.emplace_back(std::move(name), std::move(v));
    }
    const Value* find(std::string_view name) const {
        for (auto& [k, v] : items_)
            if (k == name) return &v;
        return nullptr;
    }
    template <class T> const T& get(std::string_view name) const {
        const Value* v = find(name);
        if (!v) throw std::invalid_argument("missing parameter '" + std::string(name) + "'");
        if (auto* p = std::get_if<T>(v)) return *p;
        throw std::invalid_argument("parameter '" + std::string(name) + "' has type " + std::string(type_name(*v)));
    }
    auto begin() const { return items_.begin(); }
    auto end() const { return items_.end(); }
    std::size_t size() const { return items_.size(); }

    // True once the running job was asked to stop (kill() or its time limit): a long service checks it now
    // and then and returns early; one that does not is abandoned after a grace period.
    bool stop_requested() const { return stop_ && stop_->load(std::memory_order_relaxed); }
    void watch_stop(const std::atomic<bool>* flag) { stop_ = flag; } // set by the compute server

private:
    std::vector<std::pair<std::string, Value>> items_;
    const std::atomic<bool>* stop_ = nullptr;
};

} // namespace dynexec
