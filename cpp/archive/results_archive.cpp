#include "archive/results_archive.hpp"

#include "archive/hdf5.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <system_error>
#include <type_traits>
#include <variant>

namespace dynexec {
namespace fs = std::filesystem;

namespace {

constexpr const char* kJobs = "jobs";
constexpr const char* kValue = "value";
// Values up to this size live in the dataset's object header (compact layout): one write, no extra block.
constexpr std::size_t kCompactMax = 8192;
constexpr const char* kKindNames[] = {"none", "bool", "int", "float", "str", "bytes", "pickle", "array"};
static_assert(std::size(kKindNames) == std::variant_size_v<Value>);

// HDF5 link names cannot contain '/' or be "."; anything else is a valid group name.
bool valid_name(const std::string& id) {
    return !id.empty() && id != "." && id.find('/') == std::string::npos && id.find('\0') == std::string::npos;
}

fs::path normal_dir(const fs::path& dir) {
    std::error_code ec;
    fs::path p = fs::absolute(dir, ec);
    if (ec) throw ArchiveError(fmt::format("cannot resolve results archive directory '{}': {}", dir.string(), ec.message()));
    p = p.lexically_normal();
    if (!p.has_filename() && p != p.root_path()) p = p.parent_path(); // drop a trailing '/'
    return p;
}

std::string location(const fs::path& file, const JobId& id) { return fmt::format("{}:/{}/{}", file.string(), kJobs, id); }

// HDF5 objects every write or read uses, made once per archive (or per read_from call).
struct Kit {
    h5::Type str = h5::utf8_string_type();
    h5::Type boolean = h5::bool_type();
    h5::Space scalar = h5::scalar_space();
};

// The native type of a numpy dtype string; 0 if dynexec does not support it.
hid_t native_type(const std::string& dtype, const Kit& kit) {
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

void write_value(hid_t group, const Value& value, const Kit& kit, const h5::PList& compact, const h5::PList& contiguous) {
    auto scalar = [&](hid_t type, const void* buf) {
        h5::Dataset ds = h5::create_dataset(group, kValue, type, kit.scalar.id(), compact.id());
        h5::write(ds.id(), type, buf);
    };
    auto bytes = [&](const std::string& data) {
        hsize_t n = data.size();
        h5::Space space = h5::simple_space(std::span(&n, 1));
        h5::Dataset ds = h5::create_dataset(group, kValue, H5T_NATIVE_UINT8, space.id(),
                                            n <= kCompactMax ? compact.id() : contiguous.id());
        if (n > 0) h5::write(ds.id(), H5T_NATIVE_UINT8, data.data());
    };
    std::visit(
        [&](const auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, std::monostate>) {
            } else if constexpr (std::is_same_v<T, bool>) {
                std::int8_t b = v ? 1 : 0;
                scalar(kit.boolean.id(), &b);
            } else if constexpr (std::is_same_v<T, std::int64_t>) {
                scalar(H5T_NATIVE_INT64, &v);
            } else if constexpr (std::is_same_v<T, double>) {
                scalar(H5T_NATIVE_DOUBLE, &v);
            } else if constexpr (std::is_same_v<T, std::string>) {
                if (v.find('\0') != std::string::npos)
                    throw ArchiveError("a str value with a NUL character cannot be stored as an HDF5 string");
                const char* p = v.c_str();
                scalar(kit.str.id(), &p);
            } else if constexpr (std::is_same_v<T, Bytes> || std::is_same_v<T, Pickled>) {
                bytes(v.data);
            } else {
                static_assert(std::is_same_v<T, Array>);
                hid_t type = native_type(v.dtype, kit);
                if (type == 0) throw ArchiveError(fmt::format("unsupported array dtype '{}'", v.dtype));
                std::vector<hsize_t> dims;
                for (auto d : v.shape) {
                    if (d < 0) throw ArchiveError("array has a negative dimension");
                    dims.push_back(static_cast<hsize_t>(d));
                }
                if (v.nbytes != v.size() * v.itemsize() || (v.nbytes > 0 && !v.data))
                    throw ArchiveError(fmt::format("array of dtype '{}' holds {} bytes, not the {} its shape needs",
                                                   v.dtype, v.nbytes, v.size() * v.itemsize()));
                h5::Space space = dims.empty() ? h5::scalar_space() : h5::simple_space(dims);
                h5::Dataset ds = h5::create_dataset(group, kValue, type, space.id(),
                                                    v.nbytes <= kCompactMax ? compact.id() : contiguous.id());
                // Straight from the caller's buffer: no copy, however large.
                if (v.nbytes > 0) h5::write(ds.id(), type, v.data);
            }
        },
        value);
}

Value read_value(hid_t group, const std::string& kind, const Kit& kit) {
    if (kind == "none") return std::monostate{};
    h5::Dataset ds = h5::open_dataset(group, kValue);
    if (kind == "bool") {
        std::int8_t b = 0;
        h5::read(ds.id(), kit.boolean.id(), &b);
        return b != 0;
    }
    if (kind == "int") {
        std::int64_t v = 0;
        h5::read(ds.id(), H5T_NATIVE_INT64, &v);
        return v;
    }
    if (kind == "float") {
        double v = 0;
        h5::read(ds.id(), H5T_NATIVE_DOUBLE, &v);
        return v;
    }
    if (kind == "str") return h5::read_string(ds.id(), kit.str.id());
    h5::Space space = h5::dataset_space(ds.id());
    std::vector<hsize_t> dims = h5::dims(space.id());
    if (kind == "bytes" || kind == "pickle") {
        if (dims.size() != 1) throw ArchiveError(fmt::format("'{}' is not a 1-D byte dataset", h5::describe(ds.id())));
        std::string data(dims[0], '\0');
        if (!data.empty()) h5::read(ds.id(), H5T_NATIVE_UINT8, data.data());
        if (kind == "bytes") return Bytes{std::move(data)};
        return Pickled{std::move(data)};
    }
    if (kind == "array") {
        h5::Type type = h5::dataset_type(ds.id());
        Array a;
        a.dtype = dtype_of(type.id(), ds.id());
        for (auto d : dims) a.shape.push_back(static_cast<std::int64_t>(d));
        a.nbytes = a.size() * a.itemsize();
        // Uninitialised on purpose: HDF5 overwrites every byte.
        std::shared_ptr<std::byte[]> buf(new std::byte[std::max<std::size_t>(a.nbytes, 1)]);
        if (a.nbytes > 0) h5::read(ds.id(), native_type(a.dtype, kit), buf.get());
        a.data = buf.get();
        a.owner = std::shared_ptr<const void>(buf, buf.get());
        return a;
    }
    throw ArchiveError(fmt::format("'{}' has an unknown value_kind '{}'", h5::describe(group), kind));
}

std::optional<Result> read_job(hid_t jobs, const JobId& id, const Kit& kit, std::string where) {
    if (!valid_name(id) || !h5::exists(jobs, id)) return std::nullopt;
    h5::Group g = h5::open_group(jobs, id);
    Result r;
    r.job_id = id;
    std::string status = h5::string_attribute(g.id(), "status", kit.str.id());
    try {
        r.status = status_from_name(status);
    } catch (const std::invalid_argument& e) {
        throw ArchiveError(fmt::format("'{}': {}", h5::describe(g.id()), e.what()));
    }
    r.error_type = h5::string_attribute(g.id(), "error_type", kit.str.id());
    r.message = h5::string_attribute(g.id(), "message", kit.str.id());
    r.traceback = h5::string_attribute(g.id(), "traceback", kit.str.id());
    r.owner = h5::string_attribute(g.id(), "owner", kit.str.id());
    r.service = h5::string_attribute(g.id(), "service", kit.str.id());
    r.server = h5::string_attribute(g.id(), "server", kit.str.id());
    r.submit_time = h5::double_attribute(g.id(), "submit_time");
    r.start_time = h5::double_attribute(g.id(), "start_time");
    r.end_time = h5::double_attribute(g.id(), "end_time");
    r.attempts = h5::int_attribute(g.id(), "attempts");
    r.value = read_value(g.id(), h5::string_attribute(g.id(), "value_kind", kit.str.id()), kit);
    r.location = std::move(where);
    return r;
}

} // namespace

struct ResultsArchive::Impl {
    fs::path dir, file;
    std::string session;
    mutable std::mutex mu;
    bool closed = false;
    // Declared before the file, so destroyed after it.
    Kit kit;
    h5::PList gcpl = h5::group_creation();
    h5::PList compact = h5::dataset_creation(true);
    h5::PList contiguous = h5::dataset_creation(false);
    h5::File h5file;
    h5::Group jobs;

    void require_open() const {
        if (closed) throw ArchiveError(fmt::format("results archive '{}' is closed", file.string()));
    }

    void open_or_create() {
        h5::PList fapl = h5::file_access();
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
                h5file = h5::create_file(file.string(), fapl.id());
                jobs = h5::create_group(h5file.id(), kJobs);
                h5::flush(h5file.id()); // a valid, empty archive for readers from now on
            } catch (const ArchiveError& e) {
                jobs.reset();
                h5file.reset();
                std::error_code ignored;
                fs::remove(file, ignored);
                throw ArchiveError(fmt::format("cannot create results archive file '{}': {}", file.string(), e.what()));
            }
            return;
        }
        try {
            h5file = h5::open_file(file.string(), true, fapl.id());
            jobs = h5::exists(h5file.id(), kJobs) ? h5::open_group(h5file.id(), kJobs)
                                                  : h5::create_group(h5file.id(), kJobs);
        } catch (const ArchiveError& e) {
            jobs.reset();
            h5file.reset();
            throw ArchiveError(fmt::format("cannot open results archive file '{}': {}", file.string(), e.what()));
        }
    }

    // Creates /jobs/<id> with everything in it; on failure removes what it made.
    void write_one(const Result& r) {
        hid_t str = kit.str.id(), scalar = kit.scalar.id();
        h5::Group g = h5::create_group(jobs.id(), r.job_id, gcpl.id());
        try {
            h5::set_attribute(g.id(), "status", status_name(r.status), str, scalar);
            h5::set_attribute(g.id(), "error_type", r.error_type, str, scalar);
            h5::set_attribute(g.id(), "message", r.message, str, scalar);
            h5::set_attribute(g.id(), "traceback", r.traceback, str, scalar);
            h5::set_attribute(g.id(), "owner", r.owner, str, scalar);
            h5::set_attribute(g.id(), "service", r.service, str, scalar);
            h5::set_attribute(g.id(), "server", r.server, str, scalar);
            h5::set_attribute(g.id(), "submit_time", r.submit_time, scalar);
            h5::set_attribute(g.id(), "start_time", r.start_time, scalar);
            h5::set_attribute(g.id(), "end_time", r.end_time, scalar);
            h5::set_attribute(g.id(), "attempts", r.attempts, scalar);
            h5::set_attribute(g.id(), "value_kind", kKindNames[r.value.index()], str, scalar);
            write_value(g.id(), r.value, kit, compact, contiguous);
        } catch (...) {
            g.reset();
            try {
                h5::unlink(jobs.id(), r.job_id);
            } catch (const ArchiveError&) {
                // The half-written group stays; the original error is what matters.
            }
            throw;
        }
    }
};

ResultsArchive::ResultsArchive(fs::path dir, std::string session) : impl_(std::make_unique<Impl>()) {
    if (!valid_name(session) || session == "..")
        throw ArchiveError(fmt::format("'{}' cannot name a results archive file", session));
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
    std::vector<JobId> failed;
    std::vector<std::string> reasons;
    for (const Result& r : batch) {
        try {
            if (!valid_name(r.job_id)) throw ArchiveError(fmt::format("'{}' is not a valid job ID", r.job_id));
            if (h5::exists(impl_->jobs.id(), r.job_id)) throw ArchiveError(fmt::format("job {} is already archived", r.job_id));
            impl_->write_one(r);
        } catch (const std::exception& e) { // ArchiveError, or a malformed value
            failed.push_back(r.job_id);
            reasons.emplace_back(e.what());
        }
    }
    if (failed.empty()) return;
    constexpr std::size_t kShown = 5;
    std::string why;
    for (std::size_t i = 0; i < std::min(kShown, reasons.size()); ++i) why += (i ? "; " : "") + reasons[i];
    if (reasons.size() > kShown) why += fmt::format("; and {} more", reasons.size() - kShown);
    std::string what =
        fmt::format("{} of {} results not archived in '{}': {}", failed.size(), batch.size(), impl_->file.string(), why);
    throw ArchiveWriteError(what, std::move(failed));
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
    // Close the group even if the flush fails, then the file: its close writes what is still cached.
    try {
        h5::flush(impl_->h5file.id());
    } catch (const ArchiveError&) {
        impl_->jobs.reset();
        impl_->h5file.reset();
        throw;
    }
    impl_->jobs.close("H5Gclose");
    impl_->h5file.close("H5Fclose");
}

std::optional<Result> ResultsArchive::read(const JobId& id) const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    h5::Quiet q;
    return read_job(impl_->jobs.id(), id, impl_->kit, location(impl_->file, id));
}

bool ResultsArchive::contains(const JobId& id) const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    return valid_name(id) && h5::exists(impl_->jobs.id(), id);
}

std::size_t ResultsArchive::count() const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    return h5::link_count(impl_->jobs.id());
}

std::string ResultsArchive::location_of(const JobId& id) const { return location(impl_->file, id); }
const fs::path& ResultsArchive::dir() const { return impl_->dir; }
const fs::path& ResultsArchive::file() const { return impl_->file; }
const std::string& ResultsArchive::session() const { return impl_->session; }

fs::path ResultsArchive::file_of(const fs::path& dir, const std::string& session) {
    return normal_dir(dir) / (session + ".h5");
}

std::optional<Result> ResultsArchive::read_from(const fs::path& dir, const JobId& id) {
    fs::path file = file_of(dir, JobIdGenerator::session_of(id));
    std::error_code ec;
    bool present = fs::exists(file, ec);
    if (ec) throw ArchiveError(fmt::format("cannot read results archive '{}': {}", file.string(), ec.message()));
    if (!present) return std::nullopt;
    h5::Quiet q;
    try {
        Kit kit;
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file(file.string(), false, fapl.id());
        if (!h5::exists(f.id(), kJobs))
            throw ArchiveError(fmt::format("it has no /{} group: not a dynexec results archive", kJobs));
        h5::Group jobs = h5::open_group(f.id(), kJobs);
        return read_job(jobs.id(), id, kit, location(file, id));
    } catch (const ArchiveError& e) {
        throw ArchiveError(fmt::format("cannot read job {} from results archive '{}': {}", id, file.string(), e.what()));
    }
}

} // namespace dynexec
