#include "archive/results_archive.hpp"

#include "archive/hdf5.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>

namespace dynexec {
namespace fs = std::filesystem;

namespace {

constexpr const char* kResults = "results";
constexpr const char* kHeap = "heap";
constexpr const char* kValues = "values";
constexpr const char* kFormat = "dynexec results archive";
constexpr int kVersion = 3;      // written
constexpr int kOldestRead = 2;   // read: version 2 has no stdout/stderr columns

constexpr hsize_t kRowsPerChunk = 256;
constexpr hsize_t kHeapChunk = 16 * 1024;
// Room for the few chunks one batch touches, so that a partly written chunk is not read back.
constexpr std::size_t kChunkCache = 4 << 20;
// Bigger values get a dataset of their own, written straight from their buffer.
constexpr std::size_t kInlineMax = 64 * 1024;
constexpr std::size_t kMaxDims = 8;
// Unarchived rows a write may fill with zeros to join two runs of rows into one H5Dwrite.
constexpr std::uint64_t kMaxGap = 64;
// owner, service, server and error_type repeat: each distinct one is written to /heap once.
constexpr std::size_t kInternMaxSize = 256;
constexpr std::size_t kInternMaxCount = 4096;
// Rows read at once when a reopened archive rebuilds its index.
constexpr hsize_t kScanRows = 64 * 1024;

constexpr const char* kKindNames[] = {"none", "bool", "int", "float", "str", "bytes", "pickle", "array"};
static_assert(std::size(kKindNames) == std::variant_size_v<Value>);
constexpr std::size_t kArrayKind = std::variant_size_v<Value> - 1;
// Status codes: Status + 1; 0 is a row no result was written to.
constexpr const char* kStatusNames[] = {"absent", "ok", "error", "cancelled", "lost", "killed", "timeout"};

// Bytes [offset, offset + size) of /heap.
struct Ref {
    std::uint64_t offset = 0, size = 0;
};

// One row of /results, laid out the same in memory and in the file.
struct Row {
    std::uint8_t status;
    std::uint8_t value_kind;
    std::uint8_t external; // the value is the dataset /values/<job_id>
    std::uint8_t ndim;
    std::int32_t attempts;
    char dtype[8];
    double submit_time, start_time, end_time;
    std::int64_t int_value; // bool and int values
    double float_value;
    std::uint64_t shape[kMaxDims];
    Ref value, owner, service, server, error_type, message, traceback;
    Ref stdout_text, stderr_text; // version 3
};
static_assert(std::is_trivially_copyable_v<Row> && std::is_standard_layout_v<Row>);
static_assert(sizeof(Row) == 264, "no padding: readers see exactly these fields");

h5::Type make_row_type(hid_t status, hid_t kind) {
    const hsize_t two = 2, dims = kMaxDims;
    h5::Type ref = h5::array_type(H5T_NATIVE_UINT64, std::span(&two, 1));
    h5::Type shape = h5::array_type(H5T_NATIVE_UINT64, std::span(&dims, 1));
    h5::Type dtype = h5::fixed_string_type(sizeof(Row::dtype));
    h5::Type t = h5::compound_type(sizeof(Row));
    auto add = [&](const char* name, std::size_t offset, hid_t type) { h5::insert_member(t.id(), name, offset, type); };
    add("status", offsetof(Row, status), status);
    add("value_kind", offsetof(Row, value_kind), kind);
    add("external", offsetof(Row, external), H5T_NATIVE_UINT8);
    add("ndim", offsetof(Row, ndim), H5T_NATIVE_UINT8);
    add("attempts", offsetof(Row, attempts), H5T_NATIVE_INT32);
    add("dtype", offsetof(Row, dtype), dtype.id());
    add("submit_time", offsetof(Row, submit_time), H5T_NATIVE_DOUBLE);
    add("start_time", offsetof(Row, start_time), H5T_NATIVE_DOUBLE);
    add("end_time", offsetof(Row, end_time), H5T_NATIVE_DOUBLE);
    add("int_value", offsetof(Row, int_value), H5T_NATIVE_INT64);
    add("float_value", offsetof(Row, float_value), H5T_NATIVE_DOUBLE);
    add("shape", offsetof(Row, shape), shape.id());
    add("value", offsetof(Row, value), ref.id());
    add("owner", offsetof(Row, owner), ref.id());
    add("service", offsetof(Row, service), ref.id());
    add("server", offsetof(Row, server), ref.id());
    add("error_type", offsetof(Row, error_type), ref.id());
    add("message", offsetof(Row, message), ref.id());
    add("traceback", offsetof(Row, traceback), ref.id());
    add("stdout", offsetof(Row, stdout_text), ref.id());
    add("stderr", offsetof(Row, stderr_text), ref.id());
    return t;
}

// Just the status of a row: what a reopened archive reads to rebuild its index.
h5::Type make_status_type(hid_t status) {
    h5::Type t = h5::compound_type(1);
    h5::insert_member(t.id(), "status", 0, status);
    return t;
}

// HDF5 objects every write or read uses, made once per archive (or per read_from call).
struct Kit {
    h5::Type str = h5::utf8_string_type();
    h5::Type boolean = h5::bool_type();
    h5::Type status = h5::enum_type(kStatusNames);
    h5::Type kind = h5::enum_type(kKindNames);
    h5::Type row = make_row_type(status.id(), kind.id());
    h5::Type status_only = make_status_type(status.id());
    h5::Space scalar = h5::scalar_space();
};

bool valid_file_name(const std::string& s) {
    return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

fs::path normal_dir(const fs::path& dir) {
    std::error_code ec;
    fs::path p = fs::absolute(dir, ec);
    if (ec) throw ArchiveError(fmt::format("cannot resolve results archive directory '{}': {}", dir.string(), ec.message()));
    p = p.lexically_normal();
    if (!p.has_filename() && p != p.root_path()) p = p.parent_path(); // drop a trailing '/'
    return p;
}

std::string location(const fs::path& file, std::uint64_t row) { return fmt::format("{}:/{}[{}]", file.string(), kResults, row); }

// The row of `id` in the archive of `session`; InvalidJob for anything else.
std::uint64_t row_of(const JobId& id, const std::string& session, const fs::path& file) {
    std::uint64_t seq = JobIdGenerator::sequence_of(id);
    if (JobIdGenerator::session_of(id) != session)
        throw InvalidJob(fmt::format("job {} is not of session {}, whose results archive is '{}'", id, session, file.string()));
    return seq - 1;
}

// The native type of a numpy dtype string; 0 if dynexec does not support it.
hid_t native_type(std::string_view dtype, const Kit& kit) {
    if (dtype == "f8") return H5T_NATIVE_DOUBLE;
    if (dtype == "f4") return H5T_NATIVE_FLOAT;
    if (dtype == "i8") return H5T_NATIVE_INT64;
    if (dtype == "i4") return H5T_NATIVE_INT32;
    if (dtype == "i2") return H5T_NATIVE_INT16;
    if (dtype == "i1") return H5T_NATIVE_INT8;
    if (dtype == "u8") return H5T_NATIVE_UINT64;
    if (dtype == "u4") return H5T_NATIVE_UINT32;
    if (dtype == "u2") return H5T_NATIVE_UINT16;
    if (dtype == "u1") return H5T_NATIVE_UINT8;
    if (dtype == "b1") return kit.boolean.id();
    return 0;
}

// The numpy dtype of a stored array's type, as dynexec names it.
std::string dtype_of(hid_t type, hid_t dataset) {
    std::size_t size = h5::type_size(type);
    switch (h5::type_class(type)) {
    case H5T_FLOAT:
        if (size == 8 || size == 4) return fmt::format("f{}", size);
        break;
    case H5T_INTEGER:
        if (size == 1 || size == 2 || size == 4 || size == 8) return fmt::format("{}{}", h5::is_signed(type) ? 'i' : 'u', size);
        break;
    case H5T_ENUM:
        if (size == 1) return "b1"; // h5py's numpy-bool enum
        break;
    default:
        break;
    }
    throw ArchiveError(fmt::format("dataset '{}' has a datatype dynexec cannot read as an array", h5::describe(dataset)));
}

// Checks that `file` is an archive of this layout and of `session`: version 3 to write to it, 2 or 3 to read.
void check_layout(hid_t file, const std::string& session, const Kit& kit, bool writing) {
    if (!h5::exists(file, kResults)) {
        if (h5::exists(file, "jobs"))
            throw ArchiveError("it has the group-per-job layout (/jobs) of an older dynexec, which this one cannot read");
        throw ArchiveError(fmt::format("it has no /{} dataset: not a dynexec results archive", kResults));
    }
    int version = h5::int_attribute(file, "version");
    if (writing && version != kVersion)
        throw ArchiveError(fmt::format("it has layout version {}; this dynexec reads versions {} to {} but writes only "
                                       "version {} (find() and read_archive() still read it)",
                                       version, kOldestRead, kVersion, kVersion));
    if (version < kOldestRead || version > kVersion)
        throw ArchiveError(fmt::format("it has layout version {}; this dynexec reads versions {} to {}", version,
                                       kOldestRead, kVersion));
    std::string of = h5::string_attribute(file, "session", kit.str.id());
    if (of != session) throw ArchiveError(fmt::format("it holds the results of session {}, not of session {}", of, session));
}

hsize_t extent(hid_t dataset) {
    h5::Space space = h5::dataset_space(dataset);
    auto d = h5::dims(space.id());
    if (d.size() != 1) throw ArchiveError(fmt::format("'{}' is not 1-D", h5::describe(dataset)));
    return d[0];
}

// An open archive file, for reading one row.
struct Reader {
    const Kit& kit;
    hid_t file, results, heap;
    std::uint64_t heap_size;

    void read_heap(Ref ref, void* out) const {
        if (ref.size == 0) return;
        if (ref.offset > heap_size || ref.size > heap_size - ref.offset)
            throw ArchiveError(fmt::format("a reference [{}, +{}) past the end of '{}' ({} bytes)", ref.offset, ref.size,
                                           h5::describe(heap), heap_size));
        h5::read_range(heap, H5T_NATIVE_UINT8, ref.offset, ref.size, out);
    }
    std::string text(Ref ref) const {
        std::string s(ref.size, '\0');
        read_heap(ref, s.data());
        return s;
    }

    h5::Dataset external(const JobId& id) const {
        std::string name = fmt::format("{}/{}", kValues, id);
        if (!h5::exists(file, kValues) || !h5::exists(file, name))
            throw ArchiveError(fmt::format("job {} has an external value but '{}' has no /{}", id, h5::describe(file), name));
        return h5::open_dataset(file, name);
    }

    std::string payload(const Row& row, const JobId& id) const {
        if (!row.external) return text(row.value);
        h5::Dataset ds = external(id);
        h5::Space space = h5::dataset_space(ds.id());
        auto dims = h5::dims(space.id());
        if (dims.size() != 1) throw ArchiveError(fmt::format("'{}' is not a 1-D byte dataset", h5::describe(ds.id())));
        std::string data(dims[0], '\0');
        if (!data.empty()) h5::read(ds.id(), H5T_NATIVE_UINT8, data.data());
        return data;
    }

    Array array(const Row& row, const JobId& id) const {
        Array a;
        h5::Dataset ds;
        if (row.external) {
            ds = external(id);
            h5::Type type = h5::dataset_type(ds.id());
            a.dtype = dtype_of(type.id(), ds.id());
            h5::Space space = h5::dataset_space(ds.id());
            for (auto d : h5::dims(space.id())) a.shape.push_back(static_cast<std::int64_t>(d));
        } else {
            a.dtype.assign(row.dtype, strnlen(row.dtype, sizeof(row.dtype)));
            if (native_type(a.dtype, kit) == 0 || row.ndim > kMaxDims)
                throw ArchiveError(fmt::format("job {} has an array of dtype '{}' and {} dimensions, which dynexec cannot read",
                                               id, a.dtype, row.ndim));
            a.shape.assign(row.shape, row.shape + row.ndim);
        }
        a.nbytes = a.size() * a.itemsize();
        if (!row.external && a.nbytes != row.value.size)
            throw ArchiveError(fmt::format("job {}: an array of {} bytes has {} in /{}", id, a.nbytes, row.value.size, kHeap));
        // Uninitialised on purpose: every byte is read over.
        std::shared_ptr<std::byte[]> buf(new std::byte[std::max<std::size_t>(a.nbytes, 1)]);
        if (a.nbytes > 0) {
            if (row.external) h5::read(ds.id(), native_type(a.dtype, kit), buf.get());
            else read_heap(row.value, buf.get());
        }
        a.data = buf.get();
        a.owner = std::shared_ptr<const void>(buf, buf.get());
        return a;
    }

    Value value(const Row& row, const JobId& id) const {
        switch (row.value_kind) {
        case 0: return std::monostate{};
        case 1: return row.int_value != 0;
        case 2: return std::int64_t{row.int_value};
        case 3: return row.float_value;
        case 4: return payload(row, id);
        case 5: return Bytes{payload(row, id)};
        case 6: return Pickled{payload(row, id)};
        case kArrayKind: return array(row, id);
        }
        throw ArchiveError(fmt::format("job {} has an unknown value kind {}", id, row.value_kind));
    }

    // nullopt if no result was written to the row.
    std::optional<Result> read(const JobId& id, std::uint64_t row_index, const fs::path& path) const {
        Row row{}; // members a version-2 file lacks (stdout, stderr) stay empty: HDF5 converts by name
        h5::read_range(results, kit.row.id(), row_index, 1, &row);
        if (row.status == 0) return std::nullopt;
        if (row.status >= std::size(kStatusNames))
            throw ArchiveError(fmt::format("job {} has an unknown status code {}", id, row.status));
        Result r;
        r.job_id = id;
        r.status = static_cast<Status>(row.status - 1);
        r.value = value(row, id);
        r.error_type = text(row.error_type);
        r.message = text(row.message);
        r.traceback = text(row.traceback);
        r.captured_stdout = text(row.stdout_text);
        r.captured_stderr = text(row.stderr_text);
        r.owner = text(row.owner);
        r.service = text(row.service);
        r.server = text(row.server);
        r.submit_time = row.submit_time;
        r.start_time = row.start_time;
        r.end_time = row.end_time;
        r.attempts = row.attempts;
        r.location = location(path, row_index);
        return r;
    }
};

struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

} // namespace

struct ResultsArchive::Impl {
    fs::path dir, file;
    std::string session;
    mutable std::mutex mu;
    bool closed = false;
    // Declared before the file, so destroyed after it.
    Kit kit;
    h5::PList gcpl = h5::group_creation();
    h5::PList contiguous = h5::contiguous_creation();
    h5::PList dapl = h5::dataset_access(kChunkCache);
    h5::File h5file;
    h5::Dataset results, heap;
    h5::Group values;

    std::vector<bool> archived;  // by row; during write() also the rows of the batch
    std::size_t count = 0;
    hsize_t rows = 0;            // the extent of /results
    std::uint64_t heap_size = 0; // the extent of /heap
    std::unordered_map<std::string, Ref, StringHash, std::equal_to<>> interned;
    bool values_unflushed = false; // a /values dataset was written since the last flush

    // One write()'s bytes for /heap, appended in one go.
    struct Heap {
        std::uint64_t base;
        std::string bytes;
        std::vector<std::string> interned; // keys added by this batch, dropped if the append fails

        Ref append(std::string_view data) {
            if (data.empty()) return {};
            Ref r{base + bytes.size(), data.size()};
            bytes.append(data);
            return r;
        }
    };

    void require_open() const {
        if (closed) throw ArchiveError(fmt::format("results archive '{}' is closed", file.string()));
    }

    bool is_archived(std::uint64_t row) const { return row < archived.size() && archived[row]; }
    void mark(std::uint64_t row, bool on) {
        if (row >= archived.size()) archived.resize(std::max<std::uint64_t>(row + 1, archived.size() * 2));
        archived[row] = on;
    }

    void create() {
        h5::PList fapl = h5::file_access();
        h5file = h5::create_file(file.string(), fapl.id());
        h5::set_attribute(h5file.id(), "format", kFormat, kit.str.id(), kit.scalar.id());
        h5::set_attribute(h5file.id(), "version", kVersion, kit.scalar.id());
        h5::set_attribute(h5file.id(), "session", session, kit.str.id(), kit.scalar.id());
        Row zero{};
        std::uint8_t zero_byte = 0;
        h5::PList rows_dcpl = h5::chunked_creation(kRowsPerChunk, kit.row.id(), &zero);
        h5::PList heap_dcpl = h5::chunked_creation(kHeapChunk, H5T_NATIVE_UINT8, &zero_byte);
        h5::Space empty = h5::extendible_space(0);
        results = h5::create_dataset(h5file.id(), kResults, kit.row.id(), empty.id(), rows_dcpl.id(), dapl.id());
        heap = h5::create_dataset(h5file.id(), kHeap, H5T_NATIVE_UINT8, empty.id(), heap_dcpl.id(), dapl.id());
        values = h5::create_group(h5file.id(), kValues, gcpl.id());
        h5::flush(h5file.id()); // a valid, empty archive for readers from now on
    }

    void reopen() {
        h5::PList fapl = h5::file_access();
        h5file = h5::open_file(file.string(), true, fapl.id());
        check_layout(h5file.id(), session, kit, true);
        results = h5::open_dataset(h5file.id(), kResults, dapl.id());
        heap = h5::open_dataset(h5file.id(), kHeap, dapl.id());
        values = h5::exists(h5file.id(), kValues) ? h5::open_group(h5file.id(), kValues)
                                                  : h5::create_group(h5file.id(), kValues, gcpl.id());
        rows = extent(results.id());
        heap_size = extent(heap.id());
        archived.assign(rows, false);
        std::vector<std::uint8_t> status(std::min(rows, kScanRows));
        for (hsize_t start = 0; start < rows; start += kScanRows) {
            hsize_t n = std::min(kScanRows, rows - start);
            h5::read_range(results.id(), kit.status_only.id(), start, n, status.data());
            for (hsize_t i = 0; i < n; ++i)
                if (status[i] != 0) {
                    archived[start + i] = true;
                    ++count;
                }
        }
    }

    void close_handles() noexcept {
        values.reset();
        heap.reset();
        results.reset();
        h5file.reset();
    }

    void open_or_create() {
        // Create the file ourselves first: errno gives a clear reason, and O_EXCL settles who creates it.
        int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            throw ArchiveError(fmt::format("cannot create results archive file '{}': {}", file.string(),
                                           std::error_code(errno, std::generic_category()).message()));
        std::error_code ec;
        // An empty file is one a crash left between the two steps: create it again.
        if (fd >= 0 || fs::file_size(file, ec) == 0) {
            if (fd >= 0) ::close(fd);
            try {
                create();
            } catch (const ArchiveError& e) {
                close_handles();
                std::error_code ignored;
                fs::remove(file, ignored);
                throw ArchiveError(fmt::format("cannot create results archive file '{}': {}", file.string(), e.what()));
            }
            return;
        }
        try {
            reopen();
        } catch (const ArchiveError& e) {
            close_handles();
            throw ArchiveError(fmt::format("cannot open results archive file '{}': {}", file.string(), e.what()));
        }
    }

    Ref intern(std::string_view s, Heap& h) {
        if (s.empty()) return {};
        if (s.size() > kInternMaxSize) return h.append(s);
        if (auto it = interned.find(s); it != interned.end()) return it->second;
        Ref r = h.append(s);
        if (interned.size() < kInternMaxCount) {
            interned.emplace(std::string(s), r);
            h.interned.emplace_back(s);
        }
        return r;
    }

    // /values/<id>, written straight from `data`.
    void write_external(const JobId& id, hid_t type, std::span<const hsize_t> dims, const void* data, std::size_t nbytes) {
        // One may be left by a crash or by a batch that failed after writing it: never by an archived job.
        if (h5::exists(values.id(), id)) h5::unlink(values.id(), id);
        h5::Space space = h5::simple_space(dims);
        h5::Dataset ds = h5::create_dataset(values.id(), id, type, space.id(), contiguous.id());
        values_unflushed = true;
        try {
            if (nbytes > 0) h5::write(ds.id(), type, data);
        } catch (...) {
            ds.reset();
            try {
                h5::unlink(values.id(), id);
            } catch (const ArchiveError&) {
                // An orphan dataset is harmless: no row points to it.
            }
            throw;
        }
    }

    void encode_payload(const JobId& id, const std::string& data, Row& row, Heap& h) {
        if (data.size() <= kInlineMax) {
            row.value = h.append(data);
            return;
        }
        hsize_t n = data.size();
        write_external(id, H5T_NATIVE_UINT8, std::span(&n, 1), data.data(), data.size());
        row.external = 1;
    }

    void encode_array(const JobId& id, const Array& v, Row& row, Heap& h) {
        hid_t type = native_type(v.dtype, kit);
        if (type == 0) throw ArchiveError(fmt::format("unsupported array dtype '{}'", v.dtype));
        std::vector<hsize_t> dims;
        for (auto d : v.shape) {
            if (d < 0) throw ArchiveError("array has a negative dimension");
            dims.push_back(static_cast<hsize_t>(d));
        }
        if (v.nbytes != v.size() * v.itemsize() || (v.nbytes > 0 && !v.data))
            throw ArchiveError(fmt::format("array of dtype '{}' holds {} bytes, not the {} its shape needs", v.dtype,
                                           v.nbytes, v.size() * v.itemsize()));
        std::memcpy(row.dtype, v.dtype.data(), v.dtype.size()); // at most 2 characters, checked above
        row.ndim = static_cast<std::uint8_t>(std::min(dims.size(), std::size_t{255}));
        if (dims.size() <= kMaxDims) std::copy(dims.begin(), dims.end(), row.shape);
        if (v.nbytes <= kInlineMax && dims.size() <= kMaxDims) {
            row.value = h.append({static_cast<const char*>(v.data), v.nbytes});
            return;
        }
        write_external(id, type, dims, v.data, v.nbytes);
        row.external = 1;
    }

    // Everything but the row's position; throws if the value cannot be stored.
    Row encode(const Result& r, Heap& h) {
        Row row{};
        row.value_kind = static_cast<std::uint8_t>(r.value.index());
        // The value first: it may throw, and then nothing of this result reaches /heap.
        std::visit(
            [&](const auto& v) {
                using T = std::decay_t<decltype(v)>;
                if constexpr (std::is_same_v<T, std::monostate>) {
                } else if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::int64_t>) {
                    row.int_value = v;
                } else if constexpr (std::is_same_v<T, double>) {
                    row.float_value = v;
                } else if constexpr (std::is_same_v<T, std::string>) {
                    encode_payload(r.job_id, v, row, h);
                } else if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>) {
                    encode_payload(r.job_id, v.data, row, h);
                } else {
                    static_assert(std::is_same_v<T, Array>);
                    encode_array(r.job_id, v, row, h);
                }
            },
            r.value);
        row.status = static_cast<std::uint8_t>(static_cast<int>(r.status) + 1);
        row.attempts = r.attempts;
        row.submit_time = r.submit_time;
        row.start_time = r.start_time;
        row.end_time = r.end_time;
        row.owner = intern(r.owner, h);
        row.service = intern(r.service, h);
        row.server = intern(r.server, h);
        row.error_type = intern(r.error_type, h);
        row.message = h.append(r.message);
        row.traceback = h.append(r.traceback);
        row.stdout_text = h.append(r.captured_stdout);
        row.stderr_text = h.append(r.captured_stderr);
        return row;
    }

    // Rows strictly between a and b may be written over with zeros: no result is in them.
    bool joinable(std::uint64_t a, std::uint64_t b) const {
        if (b - a - 1 > kMaxGap) return false;
        for (std::uint64_t i = a + 1; i < b; ++i)
            if (is_archived(i)) return false;
        return true;
    }

    struct Pending {
        std::uint64_t row;
        std::size_t index; // in the batch
        Row data;
    };
    struct Failure {
        std::size_t index; // in the batch
        std::string reason;
        bool duplicate = false;
    };
    struct Failures {
        std::vector<Failure> list;
        int os_errno = 0;   // of the first failed system call
        std::string detail; // HDF5's full account of the first failed write or flush
    };

    // A failed write or flush: every result in `ps` is left out, and its row marked free again.
    void fail(std::span<const Pending> ps, const ArchiveError& e, Failures& failures) {
        auto* h5e = dynamic_cast<const h5::Error*>(&e);
        int os_errno = h5e ? h5e->os_errno : 0;
        // The OS error is what a user can act on; HDF5's stack goes to what() once.
        std::string why = os_errno ? fmt::format("{} (errno {})", std::error_code(os_errno, std::generic_category()).message(), os_errno)
                                   : std::string(e.what());
        if (failures.detail.empty()) {
            failures.detail = e.what();
            failures.os_errno = os_errno;
        }
        for (const auto& p : ps) {
            mark(p.row, false);
            failures.list.push_back({p.index, why});
        }
    }

    // Zeros over rows of this batch that may have reached the file's cache: a later flush makes them absent.
    void unwrite(std::span<const std::pair<std::uint64_t, std::size_t>> runs) noexcept {
        std::vector<Row> zeros;
        for (auto [first, n] : runs) {
            zeros.assign(n, Row{});
            try {
                h5::write_range(results.id(), kit.row.id(), first, n, zeros.data());
            } catch (const ArchiveError&) {
                // Still full: the rows were never flushed, so the file has them absent, or holds their heap bytes.
            }
        }
    }

    // Bytes the batch may add to the file, counted high: its values and texts, a new chunk of rows and of
    // /heap on either side, and room for HDF5's own metadata.
    std::uint64_t room_needed(const std::vector<Result>& batch) const {
        std::uint64_t bytes = 256 * 1024 + 2 * kHeapChunk + 2 * kRowsPerChunk * sizeof(Row);
        for (const Result& r : batch) {
            bytes += sizeof(Row) + r.owner.size() + r.service.size() + r.server.size() + r.error_type.size() +
                     r.message.size() + r.traceback.size() + r.captured_stdout.size() + r.captured_stderr.size();
            std::visit(
                [&](const auto& v) {
                    using T = std::decay_t<decltype(v)>;
                    if constexpr (std::is_same_v<T, std::string>) bytes += v.size();
                    else if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>) bytes += v.data.size();
                    else if constexpr (std::is_same_v<T, Array>) bytes += v.nbytes + 4096; // its own dataset
                },
                r.value);
        }
        return bytes;
    }

    // Fails the whole batch before HDF5 sees it when the disk cannot take it: HDF5 does not recover every
    // write it could not finish (a chunk whose write failed may lose later writes into it), so a full disk
    // must be met here, not inside H5Fflush.
    bool refuse_when_full(const std::vector<Result>& batch, Failures& failures) {
        struct statvfs fs_info;
        if (::statvfs(dir.c_str(), &fs_info) != 0) return false; // cannot tell: let the write find out
        std::uint64_t free = std::uint64_t(fs_info.f_bavail) * fs_info.f_frsize, need = room_needed(batch);
        if (free >= need) return false;
        failures.os_errno = ENOSPC;
        failures.detail = fmt::format("the disk of '{}' has {} bytes free; this batch of {} results needs about {}",
                                      dir.string(), free, batch.size(), need);
        std::string why = fmt::format("{} (errno {}): {} bytes free, about {} needed",
                                      std::error_code(ENOSPC, std::generic_category()).message(), ENOSPC, free, need);
        for (std::size_t i = 0; i < batch.size(); ++i) failures.list.push_back({i, why});
        return true;
    }

    // Two steps, each flushed: the batch's bytes (/heap; encode() wrote /values), then its rows. A row never
    // reaches the file before the bytes it points to, whatever fails in between.
    Failures write(const std::vector<Result>& batch) {
        Failures failures;
        if (refuse_when_full(batch, failures)) return failures;
        std::vector<Pending> pending;
        pending.reserve(batch.size());
        Heap h{heap_size, {}, {}};
        for (std::size_t i = 0; i < batch.size(); ++i) {
            const Result& r = batch[i];
            try {
                std::uint64_t row = row_of(r.job_id, session, file);
                if (is_archived(row)) {
                    failures.list.push_back({i, fmt::format("job {} is already archived", r.job_id), true});
                    continue;
                }
                Row data = encode(r, h);
                mark(row, true);
                pending.push_back({row, i, data});
            } catch (const std::exception& e) { // ArchiveError, InvalidJob, or a malformed value
                std::string why = e.what();
                failures.list.push_back(
                    {i, why.find(r.job_id) == std::string::npos ? fmt::format("job {}: {}", r.job_id, why) : why});
            }
        }
        if (pending.empty()) return failures;

        try {
            if (!h.bytes.empty()) {
                h5::set_extent(heap.id(), heap_size + h.bytes.size());
                heap_size += h.bytes.size(); // grown: these bytes are never handed out again, even if lost
                h5::write_range(heap.id(), H5T_NATIVE_UINT8, h.base, h.bytes.size(), h.bytes.data());
            }
            if (!h.bytes.empty() || values_unflushed) h5::flush(h5file.id()); // rows of ints point to nothing new
            values_unflushed = false;
        } catch (const ArchiveError& e) {
            for (const auto& k : h.interned) interned.erase(k); // they may never reach the file
            try {
                heap_size = std::max<std::uint64_t>(heap_size, extent(heap.id()));
            } catch (const ArchiveError&) {
            }
            // HDF5 may lose a chunk whose write failed, also the bytes later written into it: start afresh.
            heap_size = (heap_size / kHeapChunk + 2) * kHeapChunk;
            fail(pending, e, failures);
            return failures;
        }

        std::sort(pending.begin(), pending.end(), [](const Pending& a, const Pending& b) { return a.row < b.row; });
        if (hsize_t need = pending.back().row + 1; need > rows) {
            try {
                h5::set_extent(results.id(), need);
                rows = need;
            } catch (const ArchiveError& e) {
                fail(pending, e, failures);
                return failures;
            }
        }
        std::vector<std::pair<std::uint64_t, std::size_t>> written; // (first row, rows) of each run
        std::vector<std::pair<std::size_t, std::size_t>> kept;      // [a, b) of `pending`, for each run written
        std::size_t kept_count = 0;
        std::vector<Row> run;
        for (std::size_t a = 0, b; a < pending.size(); a = b) {
            for (b = a + 1; b < pending.size() && joinable(pending[b - 1].row, pending[b].row); ++b) {
            }
            std::uint64_t first = pending[a].row;
            run.assign(pending[b - 1].row - first + 1, Row{});
            for (std::size_t k = a; k < b; ++k) run[pending[k].row - first] = pending[k].data;
            try {
                h5::write_range(results.id(), kit.row.id(), first, run.size(), run.data());
                written.emplace_back(first, run.size());
                kept.emplace_back(a, b);
                kept_count += b - a;
            } catch (const ArchiveError& e) {
                fail(std::span(pending).subspan(a, b - a), e, failures);
            }
        }
        if (kept.empty()) return failures;
        try {
            h5::flush(h5file.id());
        } catch (const ArchiveError& e) {
            // Which rows reached the file is unknown: take them all back. Their bytes are in the file, so a
            // row that did get there reads as what it is until the zeros are flushed with a later batch.
            unwrite(written);
            for (auto [a, b] : kept) fail(std::span(pending).subspan(a, b - a), e, failures);
            return failures;
        }
        count += kept_count;
        return failures;
    }

    Reader reader() const { return Reader{kit, h5file.id(), results.id(), heap.id(), heap_size}; }
};

ResultsArchive::ResultsArchive(fs::path dir, std::string session) : impl_(std::make_unique<Impl>()) {
    if (!valid_file_name(session)) throw ArchiveError(fmt::format("'{}' cannot name a results archive file", session));
    try {
        JobIdGenerator check(session); // rows come from job IDs, so the session must be one they can have
    } catch (const InvalidJob& e) {
        throw ArchiveError(fmt::format("cannot open a results archive for '{}': {}", session, e.what()));
    }
    impl_->dir = normal_dir(dir);
    impl_->session = std::move(session);
    impl_->file = file_of(impl_->dir, impl_->session);
    std::error_code ec;
    fs::create_directories(impl_->dir, ec);
    if (ec)
        throw ArchiveError(
            fmt::format("cannot create results archive directory '{}': {}", impl_->dir.string(), ec.message()));
    h5::Quiet q;
    impl_->open_or_create();
}

ResultsArchive::~ResultsArchive() {
    if (!impl_ || impl_->closed) return;
    try {
        close();
    } catch (const std::exception&) {
        // Destructors do not throw; close() reports the same failure to those who call it.
    }
}

void ResultsArchive::write(const std::vector<Result>& batch) {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    h5::Quiet q;
    auto failures = impl_->write(batch);
    auto& list = failures.list;
    if (list.empty()) return;
    std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
    constexpr std::size_t kShown = 5;
    std::string why;
    for (std::size_t i = 0; i < std::min(kShown, list.size()); ++i) {
        const auto& f = list[i];
        bool named = f.reason.find(batch[f.index].job_id) != std::string::npos;
        why += (i ? "; " : "") + (named ? f.reason : fmt::format("job {}: {}", batch[f.index].job_id, f.reason));
    }
    if (list.size() > kShown) why += fmt::format("; and {} more", list.size() - kShown);
    if (!failures.detail.empty()) why += fmt::format(" [{}]", failures.detail);
    std::vector<ArchiveWriteError::Failure> out;
    for (auto& f : list) out.push_back({batch[f.index].job_id, std::move(f.reason), f.duplicate});
    std::string what =
        fmt::format("{} of {} results not archived in '{}': {}", out.size(), batch.size(), impl_->file.string(), why);
    throw ArchiveWriteError(what, std::move(out), failures.os_errno);
}

void ResultsArchive::flush() {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    h5::flush(impl_->h5file.id());
}

void ResultsArchive::close() {
    std::lock_guard lk(impl_->mu);
    if (impl_->closed) return;
    impl_->closed = true;
    h5::Quiet q;
    // Close the datasets even if the flush fails, then the file: its close writes what is still cached.
    try {
        h5::flush(impl_->h5file.id());
    } catch (const ArchiveError&) {
        impl_->close_handles();
        throw;
    }
    impl_->values.close("H5Gclose");
    impl_->heap.close("H5Dclose");
    impl_->results.close("H5Dclose");
    impl_->h5file.close("H5Fclose");
}

std::optional<Result> ResultsArchive::read(const JobId& id) const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    std::uint64_t row = row_of(id, impl_->session, impl_->file);
    if (!impl_->is_archived(row)) return std::nullopt;
    h5::Quiet q;
    try {
        return impl_->reader().read(id, row, impl_->file);
    } catch (const ArchiveError& e) {
        throw ArchiveError(fmt::format("cannot read job {} from results archive '{}': {}", id, impl_->file.string(), e.what()));
    }
}

bool ResultsArchive::contains(const JobId& id) const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    return impl_->is_archived(row_of(id, impl_->session, impl_->file));
}

std::size_t ResultsArchive::count() const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    return impl_->count;
}

std::string ResultsArchive::location_of(const JobId& id) const {
    return location(impl_->file, row_of(id, impl_->session, impl_->file));
}
const fs::path& ResultsArchive::dir() const { return impl_->dir; }
const fs::path& ResultsArchive::file() const { return impl_->file; }
const std::string& ResultsArchive::session() const { return impl_->session; }

fs::path ResultsArchive::file_of(const fs::path& dir, const std::string& session) {
    return normal_dir(dir) / (session + ".h5");
}

std::optional<Result> ResultsArchive::read_from(const fs::path& dir, const JobId& id) {
    std::string session = JobIdGenerator::session_of(id);
    std::uint64_t row = JobIdGenerator::sequence_of(id) - 1;
    fs::path file = file_of(dir, session);
    std::error_code ec;
    bool present = fs::exists(file, ec);
    if (ec) throw ArchiveError(fmt::format("cannot read results archive '{}': {}", file.string(), ec.message()));
    if (!present) return std::nullopt;
    h5::Quiet q;
    try {
        Kit kit;
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file(file.string(), false, fapl.id());
        check_layout(f.id(), session, kit, false);
        h5::Dataset results = h5::open_dataset(f.id(), kResults);
        if (row >= extent(results.id())) return std::nullopt;
        h5::Dataset heap = h5::open_dataset(f.id(), kHeap);
        return Reader{kit, f.id(), results.id(), heap.id(), extent(heap.id())}.read(id, row, file);
    } catch (const ArchiveError& e) {
        throw ArchiveError(fmt::format("cannot read job {} from results archive '{}': {}", id, file.string(), e.what()));
    }
}

} // namespace dynexec
