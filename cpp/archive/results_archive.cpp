#include "archive/results_archive.hpp"
#include "archive/row_image.hpp"
#include "archive/vlen_check.hpp"

#include "archive/hdf5.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <deque>
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
constexpr const char* kIndex = "index";
constexpr const char* kValues = "values";
constexpr const char* kTexts = "texts";
constexpr const char* kBytes = "bytes";
constexpr const char* kFormat = "dynexec results archive";
constexpr int kVersion = 5;       // the one written here
constexpr int kOldestRead = 4;    // read too (its summary a variable-length string)

constexpr hsize_t kRowsPerChunk = 128; // each batch writes its last chunk whole (52 KiB): small, but few pwrites
constexpr hsize_t kIndexChunk = 512; // the same: 4 KiB rewritten per flush
constexpr hsize_t kSideChunk = 1024;  // of /texts and /bytes: 16 KiB of references, read back once per batch
// Texts of the columns that repeat (owner, function, ...) kept with their heap references across batches.
constexpr std::size_t kSharedTexts = 4096, kSharedTextMax = 512;
// Room for the few chunks one batch touches, so that a partly written chunk is not read back.
constexpr std::size_t kChunkCache = 4 << 20;
// Bigger str, bytes and pickle values get a dataset of their own, written straight from their buffer.
constexpr std::size_t kInlineMax = 64 * 1024;
// Arrays up to this size are compact datasets (their data in the dataset's header): one small write each.
constexpr std::size_t kCompactMax = 32 * 1024;
// Unarchived index entries a write may fill with zeros to join two runs of entries into one H5Dwrite.
constexpr std::uint64_t kMaxGap = 64;
// Index entries read at once when a reopened archive rebuilds its bitmap.
constexpr hsize_t kScanEntries = 64 * 1024;
constexpr const char* kTimeUnit = "submit_time, start_time, end_time: seconds since 1970-01-01T00:00:00Z (Unix time)";

constexpr const char* kKindNames[] = {"none", "bool", "int", "float", "str", "bytes", "pickle", "array"};
static_assert(std::size(kKindNames) == std::variant_size_v<Value>);
constexpr const char* kJsonKind = "json";
// By Status.
constexpr const char* kStatusNames[] = {"ok", "error", "cancelled", "lost", "killed", "timeout"};

// The pickle of the call json.loads(text) (protocol 2: GLOBAL, BINUNICODE, TUPLE1, REDUCE, STOP), which
// dynexec._runner makes of a JSON-representable result: stored as its JSON text (value_kind "json"), and
// given back as the same bytes, which any Python unpickles to the dict or list.
constexpr std::string_view kJsonPrefix{"\x80\x02" "cjson\nloads\n" "X", 15};
constexpr std::string_view kJsonSuffix{"\x85R.", 3};

std::optional<std::string_view> json_text(const Pickled& p) {
    std::string_view d = p.data;
    if (d.size() < kJsonPrefix.size() + 4 + kJsonSuffix.size() || !d.starts_with(kJsonPrefix) || !d.ends_with(kJsonSuffix))
        return std::nullopt;
    std::uint32_t n = 0;
    for (int i = 3; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(d[kJsonPrefix.size() + i]);
    if (n != d.size() - kJsonPrefix.size() - 4 - kJsonSuffix.size()) return std::nullopt;
    std::string_view text = d.substr(kJsonPrefix.size() + 4, n);
    if (text.find('\0') != std::string_view::npos) return std::nullopt;
    return text;
}

Pickled json_pickle(std::string_view text) {
    std::string d(kJsonPrefix);
    auto n = static_cast<std::uint32_t>(text.size());
    for (int i = 0; i < 4; ++i) d.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    d.append(text);
    d.append(kJsonSuffix);
    return Pickled{std::move(d)};
}

// One row of /results in memory (the file's type is this one packed). Texts are NUL-terminated UTF-8.
struct Row {
    char job_id[28];     // every job ID has 27 characters: a fixed-size string costs no heap object
    char status[10];
    char value_kind[8];
    const char* value;   // str, json text, or the path of the value's own dataset
    std::int64_t int_value;
    double float_value;
    hvl_t value_bytes;   // bytes, pickle (and a str holding NUL characters)
    const char* service;
    const char* function;
    // Short by design: a fixed-size UTF-8 string costs no heap object (one per job would cost about 15 % of a
    // small result's write). In a version-4 row read back, the first bytes hold a char* instead.
    char summary[96];
    const char* args;
    const char* label;
    const char* tags;
    const char* owner;
    const char* server;
    double submit_time, start_time, end_time;
    std::int32_t attempts;
    const char* error_type;
    const char* message;
    const char* traceback;
    const char* stdout_text;
    const char* stderr_text;
};
static_assert(std::is_trivially_copyable_v<Row> && std::is_standard_layout_v<Row>);

h5::Type make_row_type(hid_t str, hid_t id, hid_t status, hid_t kind, hid_t bytes, hid_t summary) {
    h5::Type t = h5::compound_type(sizeof(Row));
    auto add = [&](const char* name, std::size_t offset, hid_t type) { h5::insert_member(t.id(), name, offset, type); };
    add("job_id", offsetof(Row, job_id), id);
    add("status", offsetof(Row, status), status);
    add("value_kind", offsetof(Row, value_kind), kind);
    add("value", offsetof(Row, value), str);
    add("int_value", offsetof(Row, int_value), H5T_NATIVE_INT64);
    add("float_value", offsetof(Row, float_value), H5T_NATIVE_DOUBLE);
    add("value_bytes", offsetof(Row, value_bytes), bytes);
    add("service", offsetof(Row, service), str);
    add("function", offsetof(Row, function), str);
    add("summary", offsetof(Row, summary), summary);
    add("args", offsetof(Row, args), str);
    add("label", offsetof(Row, label), str);
    add("tags", offsetof(Row, tags), str);
    add("owner", offsetof(Row, owner), str);
    add("server", offsetof(Row, server), str);
    add("submit_time", offsetof(Row, submit_time), H5T_NATIVE_DOUBLE);
    add("start_time", offsetof(Row, start_time), H5T_NATIVE_DOUBLE);
    add("end_time", offsetof(Row, end_time), H5T_NATIVE_DOUBLE);
    add("attempts", offsetof(Row, attempts), H5T_NATIVE_INT32);
    add("error_type", offsetof(Row, error_type), str);
    add("message", offsetof(Row, message), str);
    add("traceback", offsetof(Row, traceback), str);
    add("stdout", offsetof(Row, stdout_text), str);
    add("stderr", offsetof(Row, stderr_text), str);
    return t;
}

h5::Type packed(hid_t type) {
    h5::Quiet q;
    h5::Type t(H5Tcopy(type));
    if (!t || H5Tpack(t.id()) < 0) h5::fail("H5Tpack", "<datatype>");
    return t;
}

// HDF5 objects every write or read uses, made once per archive (or per read_from call).
struct Kit {
    h5::Type str = h5::utf8_string_type();
    h5::Type boolean = h5::bool_type();
    h5::Type status = h5::short_text_type(sizeof(Row::status));
    h5::Type kind = h5::short_text_type(sizeof(Row::value_kind));
    h5::Type job_id = h5::short_text_type(sizeof(Row::job_id));
    h5::Type bytes = h5::vlen_type(H5T_NATIVE_UINT8);
    h5::Type summary = h5::short_text_type(sizeof(Row::summary), true);
    h5::Type row = make_row_type(str.id(), job_id.id(), status.id(), kind.id(), bytes.id(), summary.id());
    h5::Type file_row = packed(row.id());
    // How a version-4 row is read: its summary a char* in the first bytes of Row::summary.
    h5::Type row_v4 = make_row_type(str.id(), job_id.id(), status.id(), kind.id(), bytes.id(), str.id());
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

std::string os_error(int e) { return std::error_code(e, std::generic_category()).message(); }

// Creates each missing directory of `dir` with `mode` (existing ones are left as they are).
void make_dirs(const fs::path& dir, mode_t mode) {
    fs::path p;
    for (const auto& part : dir) {
        p /= part;
        if (::mkdir(p.c_str(), mode) != 0 && errno != EEXIST)
            throw ArchiveError(fmt::format("cannot create results archive directory '{}': {}", p.string(), os_error(errno)));
    }
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw ArchiveError(fmt::format("results archive directory '{}' is not a directory", dir.string()));
}

std::string iso_now() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string user_name() {
    if (passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) return pw->pw_name;
    return std::to_string(::geteuid());
}

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) return "";
    return buf;
}

std::string location(const fs::path& file, std::uint64_t row) { return fmt::format("{}:/{}[{}]", file.string(), kResults, row); }

// The sequence number - 1 of `id` in the archive of `session`; InvalidJob for anything else.
std::uint64_t slot_of(const JobId& id, const std::string& session, const fs::path& file) {
    std::uint64_t seq = JobIdGenerator::sequence_of(id); // checks that it is a job ID
    if (id.compare(0, session.size(), session) != 0 || id.size() <= session.size() || id[session.size()] != '-')
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

// Checks that `file` is an archive of `session` in a layout read here (written, if `writing`); its version.
int check_layout(hid_t file, const std::string& session, const Kit& kit, bool writing) {
    if (!h5::exists(file, kResults)) {
        if (h5::exists(file, "jobs"))
            throw ArchiveError("it has the group-per-job layout (/jobs) of an older dynexec, which this one cannot read");
        throw ArchiveError(fmt::format("it has no /{} dataset: not a dynexec results archive", kResults));
    }
    int version = h5::int_attribute(file, "version");
    if (version > kVersion || version < kOldestRead)
        throw ArchiveError(fmt::format("it has layout version {}, of {} dynexec; this one finds versions {} and {} "
                                       "(dynexec.read_archive() still reads versions 2 and 3)",
                                       version, version < kVersion ? "an older" : "a newer", kOldestRead, kVersion));
    if (writing && version != kVersion)
        throw ArchiveError(fmt::format("it has layout version {}, of an older dynexec; this one appends only to version {} "
                                       "(it still finds and reads the results there)", version, kVersion));
    if (!h5::exists(file, kIndex)) throw ArchiveError(fmt::format("it has no /{} dataset", kIndex));
    std::string of = h5::string_attribute(file, "session", kit.str.id());
    if (of != session) throw ArchiveError(fmt::format("it holds the results of session {}, not of session {}", of, session));
    return version;
}

hsize_t extent(hid_t dataset) {
    h5::Space space = h5::dataset_space(dataset);
    auto d = h5::dims(space.id());
    if (d.size() != 1) throw ArchiveError(fmt::format("'{}' is not 1-D", h5::describe(dataset)));
    return d[0];
}

// A row read back with `type`: HDF5 allocated its texts, freed here.
struct ReadRow {
    hid_t type;
    Row row{};
    explicit ReadRow(hid_t t) : type(t) {}
    ~ReadRow() { h5::reclaim(type, 1, &row); }
    ReadRow(const ReadRow&) = delete;
    ReadRow& operator=(const ReadRow&) = delete;
};

std::string str(const char* p) { return p ? std::string(p) : std::string(); }
std::string fixed(const char* p, std::size_t n) { return std::string(p, strnlen(p, n)); }

// An open archive file, for reading one row.
struct Reader {
    const Kit& kit;
    hid_t file, results, index;
    int version;

    h5::Dataset own_dataset(const JobId& id) const {
        std::string name = fmt::format("{}/{}", kValues, id);
        if (!h5::exists(file, kValues) || !h5::exists(file, name))
            throw ArchiveError(fmt::format("job {} has its value in '{}', which has no /{}", id, h5::describe(file), name));
        return h5::open_dataset(file, name);
    }

    // A str, bytes or pickle value of its own dataset: a scalar string or 1-D uint8.
    std::string own_payload(const JobId& id) const {
        h5::Dataset ds = own_dataset(id);
        h5::Type type = h5::dataset_type(ds.id());
        if (h5::type_class(type.id()) == H5T_STRING) {
            char* p = nullptr;
            h5::read(ds.id(), kit.str.id(), &p);
            std::string s = str(p);
            h5::free_memory(p);
            return s;
        }
        h5::Space space = h5::dataset_space(ds.id());
        auto dims = h5::dims(space.id());
        if (dims.size() != 1) throw ArchiveError(fmt::format("'{}' is not a 1-D byte dataset", h5::describe(ds.id())));
        std::string data(dims[0], '\0');
        if (!data.empty()) h5::read(ds.id(), H5T_NATIVE_UINT8, data.data());
        return data;
    }

    Array array(const JobId& id) const {
        Array a;
        h5::Dataset ds = own_dataset(id);
        h5::Type type = h5::dataset_type(ds.id());
        a.dtype = dtype_of(type.id(), ds.id());
        h5::Space space = h5::dataset_space(ds.id());
        for (auto d : h5::dims(space.id())) a.shape.push_back(static_cast<std::int64_t>(d));
        a.nbytes = a.size() * a.itemsize();
        // Uninitialised on purpose: every byte is read over.
        std::shared_ptr<std::byte[]> buf(new std::byte[std::max<std::size_t>(a.nbytes, 1)]);
        if (a.nbytes > 0) h5::read(ds.id(), native_type(a.dtype, kit), buf.get());
        a.data = buf.get();
        a.owner = std::shared_ptr<const void>(buf, buf.get());
        return a;
    }

    Value value(const Row& row, const JobId& id) const {
        std::string kind = fixed(row.value_kind, sizeof(row.value_kind));
        bool own = row.value && std::string_view(row.value).starts_with("/values/");
        auto bytes = [&] {
            if (own) return own_payload(id);
            return std::string(static_cast<const char*>(row.value_bytes.p), row.value_bytes.p ? row.value_bytes.len : 0);
        };
        if (kind == "none") return std::monostate{};
        if (kind == "bool") return row.int_value != 0;
        if (kind == "int") return std::int64_t{row.int_value};
        if (kind == "float") return row.float_value;
        if (kind == "str") return own || row.value_bytes.len ? bytes() : str(row.value);
        if (kind == "bytes") return Bytes{bytes()};
        if (kind == "pickle") return Pickled{bytes()};
        if (kind == kJsonKind) return json_pickle(str(row.value));
        if (kind == "array") return array(id);
        throw ArchiveError(fmt::format("job {} has an unknown value kind '{}'", id, kind));
    }

    // nullopt if the job is not archived.
    std::optional<Result> read(const JobId& id, std::uint64_t slot, const fs::path& path) const {
        if (slot >= extent(index)) return std::nullopt;
        std::uint64_t entry = 0;
        h5::read_range(index, H5T_NATIVE_UINT64, slot, 1, &entry);
        if (entry == 0) return std::nullopt;
        std::uint64_t row_index = entry - 1;
        if (row_index >= extent(results))
            throw ArchiveError(fmt::format("/{} gives job {} row {}, past the end of /{}", kIndex, id, row_index, kResults));
        // libhdf5 would follow the row's string references blindly: check them against the file first.
        if (std::string bad = VlenCheck(file, results, path.string()).check(row_index); !bad.empty())
            throw ArchiveError(fmt::format("row {} of /{} cannot be decoded: {}", row_index, kResults, bad));
        ReadRow rr(version == kVersion ? kit.row.id() : kit.row_v4.id());
        h5::read_range(results, rr.type, row_index, 1, &rr.row);
        const Row& row = rr.row;
        std::string holds = fixed(row.job_id, sizeof(row.job_id));
        if (holds != id)
            throw ArchiveError(fmt::format("/{} gives job {} row {}, which holds job '{}'", kIndex, id, row_index, holds));
        std::string status = fixed(row.status, sizeof(row.status));
        Result r;
        r.job_id = id;
        try {
            r.status = status_from_name(status);
        } catch (const std::invalid_argument&) {
            throw ArchiveError(fmt::format("job {} has an unknown status '{}'", id, status));
        }
        r.value = value(row, id);
        r.error_type = str(row.error_type);
        r.message = str(row.message);
        r.traceback = str(row.traceback);
        r.captured_stdout = str(row.stdout_text);
        r.captured_stderr = str(row.stderr_text);
        r.owner = str(row.owner);
        r.service = str(row.service);
        r.server = str(row.server);
        r.submit_time = row.submit_time;
        r.start_time = row.start_time;
        r.end_time = row.end_time;
        r.attempts = row.attempts;
        auto info = std::make_shared<JobInfo>();
        info->function = str(row.function);
        info->args = str(row.args);
        if (version == kVersion) {
            info->summary = fixed(row.summary, sizeof(row.summary));
        } else {
            const char* summary = nullptr;
            std::memcpy(&summary, row.summary, sizeof summary);
            info->summary = str(summary);
        }
        info->label = str(row.label);
        info->tags = str(row.tags);
        r.info = std::move(info);
        r.location = location(path, row_index);
        return r;
    }
};

} // namespace

struct ResultsArchive::Impl {
    fs::path dir, file;
    std::string session;
    ArchiveAccess access = ArchiveAccess::owner;
    mutable std::mutex mu;
    bool closed = false;
    // Declared before the file, so destroyed after it.
    Kit kit;
    h5::PList gcpl = h5::group_creation();
    h5::PList contiguous = h5::contiguous_creation();
    h5::PList compact = h5::compact_creation();
    h5::PList dapl = h5::dataset_access(kChunkCache);
    h5::File h5file;
    h5::Dataset results, index;
    h5::Group values;

    // Rows go to the file as chunk images (row_image.hpp), without libhdf5's conversion, which creates a heap
    // object for every text of every row: each text and bytes value is stored once in /texts or /bytes and the
    // rows refer to its heap object, a text of a column that repeats once per session (while it is cached).
    // nullopt for a file whose rows cannot be laid out by hand: they go through H5Dwrite.
    std::optional<RowImage> image;
    h5::Dataset texts, blobs;
    hsize_t texts_size = 0, blobs_size = 0;
    hsize_t chunk = 0;                   // rows per chunk of /results
    std::vector<unsigned char> tail;     // the image of the rows in the last chunk of /results, when not full
    bool tail_known = false;             // false: read it from the file first
    std::vector<bool> repeats;           // by reference of the row image: a column whose texts repeat
    struct TextHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, HeapRef, TextHash, std::equal_to<>> shared; // text -> its heap object
    std::vector<std::pair<std::string_view, HeapRef>> to_share;                 // of the batch being written
    std::vector<unsigned char> side_buf, chunk_buf;

    // By sequence number - 1: the job's row + 1 (kPending while a write() holds it), 0 if not archived.
    std::vector<std::uint32_t> archived;
    static constexpr std::uint32_t kPending = UINT32_MAX;
    std::size_t count = 0;
    hsize_t rows = 0;            // the extent of /results
    hsize_t index_size = 0;      // the extent of /index

    void require_open() const {
        if (closed) throw ArchiveError(fmt::format("results archive '{}' is closed", file.string()));
    }

    bool is_archived(std::uint64_t slot) const { return slot < archived.size() && archived[slot] != 0; }
    void mark(std::uint64_t slot, std::uint32_t entry) {
        if (slot >= archived.size()) archived.resize(std::max<std::uint64_t>(slot + 1, archived.size() * 2));
        archived[slot] = entry;
    }
    std::optional<std::uint64_t> row_of(std::uint64_t slot) const {
        if (!is_archived(slot) || archived[slot] == kPending) return std::nullopt;
        return archived[slot] - 1;
    }

    void create() {
        h5::PList fapl = h5::file_access();
        h5file = h5::create_file(file.string(), fapl.id());
        hid_t f = h5file.id();
        h5::set_attribute(f, "format", kFormat, kit.str.id(), kit.scalar.id());
        h5::set_attribute(f, "version", kVersion, kit.scalar.id());
        h5::set_attribute(f, "session", session, kit.str.id(), kit.scalar.id());
        h5::set_attribute(f, "start_time", iso_now(), kit.str.id(), kit.scalar.id());
        h5::set_attribute(f, "end_time", "", kit.str.id(), kit.scalar.id());
        h5::set_attribute(f, "user", user_name(), kit.str.id(), kit.scalar.id());
        h5::set_attribute(f, "host", host_name(), kit.str.id(), kit.scalar.id());
        h5::set_attribute(f, "pid", static_cast<int>(::getpid()), kit.scalar.id());
        Row zero{};
        const char* empty_text = "";
        for (auto* p : {&zero.value, &zero.service, &zero.function, &zero.args, &zero.label,
                        &zero.tags, &zero.owner, &zero.server, &zero.error_type, &zero.message, &zero.traceback,
                        &zero.stdout_text, &zero.stderr_text})
            *p = empty_text;
        std::uint64_t zero_entry = 0;
        // Never filled: rows are only ever appended whole, and a variable-length fill costs a conversion of
        // every element of each new chunk.
        h5::PList rows_dcpl = h5::chunked_creation(kRowsPerChunk, kit.row.id(), &zero, true);
        h5::PList index_dcpl = h5::chunked_creation(kIndexChunk, H5T_NATIVE_UINT64, &zero_entry);
        h5::Space empty = h5::extendible_space(0);
        results = h5::create_dataset(f, kResults, kit.file_row.id(), empty.id(), rows_dcpl.id(), dapl.id());
        h5::set_attribute(results.id(), "time_unit", kTimeUnit, kit.str.id(), kit.scalar.id());
        index = h5::create_dataset(f, kIndex, H5T_NATIVE_UINT64, empty.id(), index_dcpl.id(), dapl.id());
        values = h5::create_group(f, kValues, gcpl.id());
        prepare_images();
        h5::flush(f); // a valid, empty archive for readers from now on
    }

    h5::Dataset side_dataset(const char* name, hid_t type) {
        hid_t f = h5file.id();
        if (h5::exists(f, name)) return h5::open_dataset(f, name, dapl.id());
        h5::PList dcpl = h5::chunked_creation(kSideChunk, type, nullptr, true);
        h5::Space empty = h5::extendible_space(0);
        h5::Dataset ds = h5::create_dataset(f, name, type, empty.id(), dcpl.id(), dapl.id());
        h5::set_attribute(ds.id(), "about", "storage the rows of /results share (each text or bytes value once); read /results",
                          kit.str.id(), kit.scalar.id());
        return ds;
    }

    // Opens (or adds) /texts and /bytes and works out the row image of this file, if it has one.
    void prepare_images() {
        texts = side_dataset(kTexts, kit.str.id());
        blobs = side_dataset(kBytes, kit.bytes.id());
        texts_size = extent(texts.id());
        blobs_size = extent(blobs.id());
        chunk = h5::chunk_rows(results.id());
        image.reset();
        tail_known = false;
        std::size_t sizeof_addr = 0, sizeof_size = 0;
        {
            h5::Quiet q;
            h5::PList fcpl(H5Fget_create_plist(h5file.id()));
            if (!fcpl || H5Pget_sizes(fcpl.id(), &sizeof_addr, &sizeof_size) < 0) return;
        }
        if (chunk == 0 || h5::chunk_rows(texts.id()) != kSideChunk || h5::chunk_rows(blobs.id()) != kSideChunk) return;
        h5::Type file_row = h5::dataset_type(results.id());
        image = RowImage::of(kit.row.id(), file_row.id(), sizeof_addr);
        if (!image) return;
        repeats.clear();
        for (const auto& r : image->references())
            repeats.push_back(r.name == "service" || r.name == "function" || r.name == "label" || r.name == "tags" ||
                              r.name == "owner" || r.name == "server" || r.name == "error_type");
    }

    void reopen() {
        h5::PList fapl = h5::file_access();
        h5file = h5::open_file(file.string(), true, fapl.id());
        check_layout(h5file.id(), session, kit, true);
        results = h5::open_dataset(h5file.id(), kResults, dapl.id());
        index = h5::open_dataset(h5file.id(), kIndex, dapl.id());
        values = h5::exists(h5file.id(), kValues) ? h5::open_group(h5file.id(), kValues)
                                                  : h5::create_group(h5file.id(), kValues, gcpl.id());
        rows = extent(results.id());
        index_size = extent(index.id());
        prepare_images();
        archived.assign(index_size, 0);
        std::vector<std::uint64_t> entries(std::min(index_size, kScanEntries));
        for (hsize_t start = 0; start < index_size; start += kScanEntries) {
            hsize_t n = std::min(kScanEntries, index_size - start);
            h5::read_range(index.id(), H5T_NATIVE_UINT64, start, n, entries.data());
            for (hsize_t i = 0; i < n; ++i)
                if (entries[i] != 0 && entries[i] <= rows && entries[i] < kPending) {
                    archived[start + i] = static_cast<std::uint32_t>(entries[i]);
                    ++count;
                }
        }
    }

    void close_handles() noexcept {
        blobs.reset();
        texts.reset();
        values.reset();
        index.reset();
        results.reset();
        h5file.reset();
    }

    void open_or_create() {
        // Create the file ourselves first: errno gives a clear reason, O_EXCL settles who creates it, and its mode
        // keeps it private (H5Fcreate's truncation keeps the mode).
        mode_t mode = access == ArchiveAccess::group ? 0640 : 0600;
        int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd < 0 && errno != EEXIST)
            throw ArchiveError(fmt::format("cannot create results archive file '{}': {}", file.string(), os_error(errno)));
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

    // /values/<id>, written straight from `data`.
    void write_own(const JobId& id, hid_t type, std::span<const hsize_t> dims, const void* data, std::size_t nbytes,
                   bool small) {
        // One may be left by a crash or by a batch that failed after writing it: never by an archived job.
        if (h5::exists(values.id(), id)) h5::unlink(values.id(), id);
        h5::Space space = h5::simple_space(dims);
        h5::Dataset ds = h5::create_dataset(values.id(), id, type, space.id(), small ? compact.id() : contiguous.id());
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

    void write_own_text(const JobId& id, const std::string& text) {
        if (h5::exists(values.id(), id)) h5::unlink(values.id(), id);
        h5::Dataset ds = h5::create_dataset(values.id(), id, kit.str.id(), kit.scalar.id(), H5P_DEFAULT);
        const char* p = text.c_str();
        h5::write(ds.id(), kit.str.id(), &p);
    }

    // Texts of one batch that are not the results' own strings (their NUL characters replaced, paths).
    struct Scratch {
        std::deque<std::string> texts;
        const char* keep(std::string s) { return texts.emplace_back(std::move(s)).c_str(); }
        // HDF5 strings end at a NUL: one inside a text is written as the two characters "\0".
        // An empty text is a null string: HDF5 stores no heap object for it (h5py reads it as "", h5dump as NULL).
        const char* text(const std::string& s) {
            if (s.empty()) return nullptr;
            if (s.find('\0') == std::string::npos) return s.c_str();
            std::string out;
            for (char c : s) {
                if (c) out.push_back(c);
                else out.append("\\0");
            }
            return keep(std::move(out));
        }
    };

    // At most 95 bytes, cut where a UTF-8 character starts (dynexec's own summaries are shorter), up to a NUL.
    static void set_summary(Row& row, std::string_view text) {
        constexpr std::size_t room = sizeof(row.summary) - 1;
        text = text.substr(0, text.find('\0'));
        std::size_t n = text.size();
        if (n > room) {
            n = room - 3;
            while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
        }
        std::memcpy(row.summary, text.data(), n);
        if (n < text.size()) std::memcpy(row.summary + n, "...", 3);
    }

    static void set_kind(Row& row, std::string_view kind) {
        std::memset(row.value_kind, 0, sizeof(row.value_kind));
        std::memcpy(row.value_kind, kind.data(), kind.size());
    }

    const char* own_path(const JobId& id, Scratch& s) { return s.keep(fmt::format("/{}/{}", kValues, id)); }

    void encode_payload(const JobId& id, const std::string& data, Row& row, Scratch& s) {
        if (data.size() <= kInlineMax) {
            row.value_bytes = {data.size(), const_cast<char*>(data.data())};
            return;
        }
        hsize_t n = data.size();
        write_own(id, H5T_NATIVE_UINT8, std::span(&n, 1), data.data(), data.size(), false);
        row.value = own_path(id, s);
    }

    void encode_array(const JobId& id, const Array& v, Row& row, Scratch& s) {
        hid_t type = native_type(v.dtype, kit);
        if (type == 0) throw ArchiveError(fmt::format("unsupported array dtype '{}'", v.dtype));
        std::vector<hsize_t> dims;
        for (auto d : v.shape) {
            if (d < 0) throw ArchiveError("array has a negative dimension");
            dims.push_back(static_cast<hsize_t>(d));
        }
        if (dims.size() > H5S_MAX_RANK) throw ArchiveError(fmt::format("array has {} dimensions, over HDF5's {}", dims.size(), H5S_MAX_RANK));
        if (v.nbytes != v.size() * v.itemsize() || (v.nbytes > 0 && !v.data))
            throw ArchiveError(fmt::format("array of dtype '{}' holds {} bytes, not the {} its shape needs", v.dtype,
                                           v.nbytes, v.size() * v.itemsize()));
        write_own(id, type, dims, v.data, v.nbytes, v.nbytes <= kCompactMax);
        row.value = own_path(id, s);
    }

    // Everything of the row; throws if the value cannot be stored.
    Row encode(const Result& r, Scratch& s) {
        static const char* const empty = nullptr;
        Row row{};
        row.value = empty;
        set_kind(row, kKindNames[r.value.index()]);
        // The value first: it may throw, and then nothing of this result is kept.
        std::visit(
            [&](const auto& v) {
                using T = std::decay_t<decltype(v)>;
                if constexpr (std::is_same_v<T, std::monostate>) {
                } else if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::int64_t>) {
                    row.int_value = v;
                } else if constexpr (std::is_same_v<T, double>) {
                    row.float_value = v;
                } else if constexpr (std::is_same_v<T, std::string>) {
                    if (v.size() > kInlineMax && v.find('\0') == std::string::npos) {
                        write_own_text(r.job_id, v);
                        row.value = own_path(r.job_id, s);
                    } else if (v.find('\0') != std::string::npos) {
                        encode_payload(r.job_id, v, row, s); // its UTF-8 bytes, whole
                    } else {
                        row.value = v.c_str();
                    }
                } else if constexpr (std::is_same_v<T, Bytes>) {
                    encode_payload(r.job_id, v.data, row, s);
                } else if constexpr (std::is_same_v<T, Pickled>) {
                    if (auto json = json_text(v)) {
                        set_kind(row, kJsonKind);
                        row.value = s.keep(std::string(*json));
                    } else {
                        encode_payload(r.job_id, v.data, row, s);
                    }
                } else {
                    static_assert(std::is_same_v<T, Array>);
                    encode_array(r.job_id, v, row, s);
                }
            },
            r.value);
        std::string_view status = kStatusNames[static_cast<int>(r.status)];
        std::memcpy(row.status, status.data(), status.size());
        if (r.job_id.size() >= sizeof(row.job_id)) throw ArchiveError(fmt::format("job ID '{}' is too long", r.job_id));
        std::memcpy(row.job_id, r.job_id.data(), r.job_id.size());
        row.attempts = r.attempts;
        row.submit_time = r.submit_time;
        row.start_time = r.start_time;
        row.end_time = r.end_time;
        row.owner = s.text(r.owner);
        row.service = s.text(r.service);
        row.server = s.text(r.server);
        row.error_type = s.text(r.error_type);
        row.message = s.text(r.message);
        row.traceback = s.text(r.traceback);
        row.stdout_text = s.text(r.captured_stdout);
        row.stderr_text = s.text(r.captured_stderr);
        const JobInfo* info = r.info.get();
        row.function = info ? s.text(info->function) : empty;
        if (info) set_summary(row, info->summary);
        row.args = info ? s.text(info->args) : empty;
        row.label = info ? s.text(info->label) : empty;
        row.tags = info ? s.text(info->tags) : empty;
        return row;
    }

    // Index entries strictly between a and b may be written over with zeros: no job of them is archived.
    bool joinable(std::uint64_t a, std::uint64_t b) const {
        if (b - a - 1 > kMaxGap) return false;
        for (std::uint64_t i = a + 1; i < b; ++i)
            if (is_archived(i)) return false;
        return true;
    }

    struct Pending {
        std::uint64_t slot;  // sequence number - 1
        std::size_t index;   // in the batch
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

    // A failed write or flush: every result in `ps` is left out, and its slot marked free again.
    void fail(std::span<const Pending> ps, const ArchiveError& e, Failures& failures) {
        auto* h5e = dynamic_cast<const h5::Error*>(&e);
        int os_errno = h5e ? h5e->os_errno : 0;
        // The OS error is what a user can act on; HDF5's stack goes to what() once.
        std::string why = os_errno ? fmt::format("{} (errno {})", os_error(os_errno), os_errno) : std::string(e.what());
        if (failures.detail.empty()) {
            failures.detail = e.what();
            failures.os_errno = os_errno;
        }
        for (const auto& p : ps) {
            mark(p.slot, 0);
            failures.list.push_back({p.index, why});
        }
    }

    // Takes the batch's rows back out of /results (they are past its old end) and zeros its index entries.
    void unwrite(hsize_t old_rows, std::span<const std::pair<std::uint64_t, std::size_t>> index_runs) noexcept {
        try {
            std::vector<std::uint64_t> zeros;
            for (auto [first, n] : index_runs) {
                zeros.assign(n, 0);
                h5::write_range(index.id(), H5T_NATIVE_UINT64, first, n, zeros.data());
            }
        } catch (const ArchiveError&) {
            // Still failing: those entries never reached the file, or point past the end of /results below.
        }
        to_share.clear();
        shared.clear();
        tail_known = false;
        try {
            // Chunk images: the rows left past the new end go first, so that nothing refers to shared heap
            // objects from where libhdf5 might write over it.
            if (image && old_rows % chunk != 0 && rows > old_rows) {
                const hsize_t first_chunk = old_rows / chunk * chunk, width = image->size();
                std::vector<unsigned char> buf(chunk * width);
                h5::read_chunk(results.id(), first_chunk, buf.data());
                std::fill(buf.begin() + static_cast<std::ptrdiff_t>((old_rows - first_chunk) * width), buf.end(), 0);
                h5::write_chunk(results.id(), first_chunk, buf.data(), buf.size());
            }
        } catch (const ArchiveError&) {
        }
        try {
            h5::set_extent(results.id(), old_rows);
            rows = old_rows;
        } catch (const ArchiveError&) {
        }
    }

    // Bytes the batch may add to the file, counted high: its values and texts, new chunks, HDF5's metadata.
    std::uint64_t room_needed(const std::vector<Result>& batch) const {
        std::uint64_t bytes = 256 * 1024 + 2 * kRowsPerChunk * sizeof(Row) + 2 * kIndexChunk * 8;
        for (const Result& r : batch) {
            bytes += sizeof(Row) + 16 * 16 + r.job_id.size() + r.owner.size() + r.service.size() + r.server.size() +
                     r.error_type.size() + r.message.size() + r.traceback.size() + r.captured_stdout.size() +
                     r.captured_stderr.size();
            if (r.info)
                bytes += r.info->function.size() + r.info->args.size() + r.info->summary.size() + r.info->label.size() +
                         r.info->tags.size();
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
    // write it could not finish, so a full disk must be met here, not inside H5Fflush.
    bool refuse_when_full(const std::vector<Result>& batch, Failures& failures) {
        struct statvfs fs_info;
        if (::statvfs(dir.c_str(), &fs_info) != 0) return false; // cannot tell: let the write find out
        std::uint64_t free = std::uint64_t(fs_info.f_bavail) * fs_info.f_frsize, need = room_needed(batch);
        if (free >= need) return false;
        failures.os_errno = ENOSPC;
        failures.detail = fmt::format("the disk of '{}' has {} bytes free; this batch of {} results needs about {}",
                                      dir.string(), free, batch.size(), need);
        std::string why = fmt::format("{} (errno {}): {} bytes free, about {} needed", os_error(ENOSPC), ENOSPC, free, need);
        for (std::size_t i = 0; i < batch.size(); ++i) failures.list.push_back({i, why});
        return true;
    }

    // The batch's values and rows (appended to /results), then its /index entries, then one flush: write()
    // returns once all of it is in the file. A crash inside that flush can leave an index entry whose row is
    // not whole; readers check that the row holds the job the index names (and its job was never reported).
    Failures write(const std::vector<Result>& batch) {
        Failures failures;
        if (refuse_when_full(batch, failures)) return failures;
        std::vector<Pending> pending;
        std::vector<Row> block; // the rows of `pending`
        pending.reserve(batch.size());
        block.reserve(batch.size());
        Scratch scratch;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            const Result& r = batch[i];
            try {
                std::uint64_t slot = slot_of(r.job_id, session, file);
                if (is_archived(slot)) {
                    failures.list.push_back({i, fmt::format("job {} is already archived", r.job_id), true});
                    continue;
                }
                Row data = encode(r, scratch);
                mark(slot, kPending);
                pending.push_back({slot, i});
                block.push_back(data);
            } catch (const std::exception& e) { // ArchiveError, InvalidJob, or a malformed value
                std::string why = e.what();
                failures.list.push_back(
                    {i, why.find(r.job_id) == std::string::npos ? fmt::format("job {}: {}", r.job_id, why) : why});
            }
        }
        if (pending.empty()) return failures;

        const hsize_t old_rows = rows;
        try {
            if (image) {
                write_images(block, old_rows);
            } else {
                h5::set_extent(results.id(), old_rows + block.size());
                rows = old_rows + block.size();
                h5::PList dxpl = h5::conversion_buffer(std::max<std::size_t>(block.size(), 16) * sizeof(Row));
                h5::write_range(results.id(), kit.row.id(), old_rows, block.size(), block.data(), dxpl.id());
            }
        } catch (const ArchiveError& e) {
            unwrite(old_rows, {});
            fail(pending, e, failures);
            return failures;
        }

        if (old_rows + pending.size() >= kPending) {
            unwrite(old_rows, {});
            fail(pending, ArchiveError("the archive holds its maximum of 2^32 - 2 rows"), failures);
            return failures;
        }
        std::vector<std::pair<std::uint64_t, std::uint64_t>> order; // (slot, row), by slot
        order.reserve(pending.size());
        for (std::size_t k = 0; k < pending.size(); ++k) order.emplace_back(pending[k].slot, old_rows + k);
        std::sort(order.begin(), order.end());
        std::vector<std::pair<std::uint64_t, std::size_t>> runs; // (first slot, entries) of each H5Dwrite
        try {
            if (hsize_t need = order.back().first + 1; need > index_size) {
                h5::set_extent(index.id(), need);
                index_size = need;
            }
            std::vector<std::uint64_t> run;
            for (std::size_t a = 0, b; a < order.size(); a = b) {
                for (b = a + 1; b < order.size() && joinable(order[b - 1].first, order[b].first); ++b) {
                }
                std::uint64_t first = order[a].first;
                run.assign(order[b - 1].first - first + 1, 0);
                for (std::size_t k = a; k < b; ++k) run[order[k].first - first] = order[k].second + 1;
                runs.emplace_back(first, run.size());
                h5::write_range(index.id(), H5T_NATIVE_UINT64, first, run.size(), run.data());
            }
            h5::flush(h5file.id());
        } catch (const ArchiveError& e) {
            unwrite(old_rows, runs);
            fail(pending, e, failures);
            return failures;
        }
        for (auto [slot, row] : order) mark(slot, static_cast<std::uint32_t>(row + 1));
        count += pending.size();
        // Only heap objects now in the file are shared by later batches.
        if (shared.size() + to_share.size() > kSharedTexts) shared.clear();
        for (auto& [text, ref] : to_share) shared.emplace(std::string(text), ref);
        to_share.clear();
        return failures;
    }

    // Appends `n` elements (char* or hvl_t, as `type` says) to /texts or /bytes, and gives how the file refers to
    // each: the references the rows will hold.
    void append_side(hid_t ds, hsize_t& size, hid_t type, const void* elems, std::size_t n, HeapRef* out) {
        hsize_t first = size;
        h5::set_extent(ds, first + n);
        size = first + n; // also if what follows fails: elements never written read as empty
        h5::PList dxpl = h5::conversion_buffer(std::max<std::size_t>(n, 16) * sizeof(HeapRef::raw)); // not 1 MiB per call
        h5::write_range(ds, type, first, n, elems, dxpl.id());
        constexpr std::size_t kRef = sizeof(HeapRef::raw);
        side_buf.resize(kSideChunk * kRef);
        for (hsize_t c = first / kSideChunk * kSideChunk; c < first + n; c += kSideChunk) {
            h5::read_chunk(ds, c, side_buf.data());
            for (hsize_t e = std::max(c, first); e < std::min(c + kSideChunk, first + n); ++e)
                std::memcpy(out[e - first].raw.data(), &side_buf[(e - c) * kRef], kRef);
        }
    }

    // The rows of `block` after row `old_rows`, as chunk images: their texts and bytes first (new ones to /texts
    // and /bytes), then every chunk they touch, whole (the last one's earlier rows from `tail`).
    void write_images(const std::vector<Row>& block, hsize_t old_rows) {
        const auto& members = image->references();
        const std::size_t nr = members.size(), width = image->size();
        const hsize_t first_chunk = old_rows / chunk * chunk, before = old_rows - first_chunk;
        const hsize_t end = old_rows + block.size(), chunks = (before + block.size() + chunk - 1) / chunk;
        if (before && !tail_known) {
            tail.resize(chunk * width);
            h5::read_chunk(results.id(), first_chunk, tail.data());
        }
        auto& buf = chunk_buf; // kept: zeroing a batch's worth of chunks costs more than the rows' copy
        buf.resize(std::max<std::size_t>(buf.size(), chunks * chunk * width));
        std::memset(&buf[(before + block.size()) * width], 0, (chunks * chunk - before - block.size()) * width);
        if (before) std::memcpy(buf.data(), tail.data(), before * width);
        auto image_of = [&](std::size_t r) { return &buf[(before + r) * width]; };

        static const HeapRef null_ref{};
        std::vector<const char*> new_texts;
        std::vector<hvl_t> new_bytes;
        std::vector<std::pair<std::size_t, std::size_t>> text_waits, byte_waits; // (row * nr + member, index in new_*)
        std::unordered_map<std::string_view, std::size_t> seen;                  // a repeating text -> its index
        constexpr std::size_t kNone = SIZE_MAX;
        struct Last {
            std::string_view text;   // of the column in the row before
            bool set = false;
            std::size_t fresh = kNone; // its index in new_texts if it is new, else `ref`
            HeapRef ref;
        };
        std::vector<Last> last_of(nr);
        to_share.clear();
        for (std::size_t r = 0; r < block.size(); ++r) {
            const auto* base = reinterpret_cast<const unsigned char*>(&block[r]);
            unsigned char* out = image_of(r);
            image->copy_fixed(base, out);
            for (std::size_t k = 0; k < nr; ++k) {
                const std::size_t slot = r * nr + k;
                if (!members[k].string) {
                    hvl_t v;
                    std::memcpy(&v, base + members[k].offset, sizeof v);
                    if (v.p && v.len) {
                        byte_waits.emplace_back(slot, new_bytes.size());
                        new_bytes.push_back(v);
                    } else {
                        image->put(out, k, null_ref);
                    }
                    continue;
                }
                const char* p;
                std::memcpy(&p, base + members[k].offset, sizeof p);
                if (!p || !*p) { // a null string: "" to every reader
                    image->put(out, k, null_ref);
                    continue;
                }
                if (!repeats[k]) { // a text of its own (arguments, a message): no search for it
                    text_waits.emplace_back(slot, new_texts.size());
                    new_texts.push_back(p);
                    continue;
                }
                std::string_view text(p);
                Last& l = last_of[k];
                if (l.set && l.text == text) { // most often the same as the row before
                    if (l.fresh != kNone) text_waits.emplace_back(slot, l.fresh);
                    else image->put(out, k, l.ref);
                    continue;
                }
                l = {text, true, kNone, {}};
                if (auto it = shared.find(text); it != shared.end()) {
                    l.ref = it->second;
                    image->put(out, k, l.ref);
                    continue;
                }
                auto [it, fresh] = seen.try_emplace(text, new_texts.size());
                if (fresh) {
                    new_texts.push_back(p);
                    if (text.size() <= kSharedTextMax) to_share.emplace_back(text, HeapRef{});
                }
                l.fresh = it->second;
                text_waits.emplace_back(slot, it->second);
            }
        }
        std::vector<HeapRef> text_refs(new_texts.size()), byte_refs(new_bytes.size());
        if (!new_texts.empty()) append_side(texts.id(), texts_size, kit.str.id(), new_texts.data(), new_texts.size(), text_refs.data());
        if (!new_bytes.empty()) append_side(blobs.id(), blobs_size, kit.bytes.id(), new_bytes.data(), new_bytes.size(), byte_refs.data());
        // What the file says must be what was written: anything else and the rows would point at other data.
        for (std::size_t i = 0; i < new_texts.size(); ++i)
            if (text_refs[i].null() || text_refs[i].length() != std::strlen(new_texts[i]))
                throw ArchiveError(fmt::format("/{} does not refer to the text just written to it (element {})", kTexts, texts_size - new_texts.size() + i));
        for (std::size_t i = 0; i < new_bytes.size(); ++i)
            if (byte_refs[i].null() || byte_refs[i].length() != new_bytes[i].len)
                throw ArchiveError(fmt::format("/{} does not refer to the bytes just written to it (element {})", kBytes, blobs_size - new_bytes.size() + i));
        for (auto [slot, i] : text_waits) image->put(image_of(slot / nr), slot % nr, text_refs[i]);
        for (auto [slot, i] : byte_waits) image->put(image_of(slot / nr), slot % nr, byte_refs[i]);
        for (auto& [text, ref] : to_share) ref = text_refs[seen.at(text)];

        tail_known = false;
        h5::set_extent(results.id(), end);
        rows = end;
        for (hsize_t c = 0; c < chunks; ++c)
            h5::write_chunk(results.id(), first_chunk + c * chunk, &buf[c * chunk * width], chunk * width);
        const hsize_t last = end / chunk * chunk;
        tail.assign(buf.begin() + static_cast<std::ptrdiff_t>((last - first_chunk) * width),
                    buf.begin() + static_cast<std::ptrdiff_t>((end - first_chunk) * width));
        tail_known = true;
    }

    Reader reader() const { return Reader{kit, h5file.id(), results.id(), index.id(), kVersion}; }
};

ResultsArchive::ResultsArchive(fs::path dir, std::string session, ArchiveAccess access)
    : impl_(std::make_unique<Impl>()) {
    if (!valid_file_name(session)) throw ArchiveError(fmt::format("'{}' cannot name a results archive file", session));
    try {
        JobIdGenerator check(session); // rows come from job IDs, so the session must be one they can have
    } catch (const InvalidJob& e) {
        throw ArchiveError(fmt::format("cannot open a results archive for '{}': {}", session, e.what()));
    }
    impl_->dir = normal_dir(dir);
    impl_->session = std::move(session);
    impl_->access = access;
    impl_->file = file_of(impl_->dir, impl_->session);
    make_dirs(impl_->dir, access == ArchiveAccess::group ? 0750 : 0700);
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

void ResultsArchive::set_info(const std::vector<std::pair<std::string, std::string>>& info) {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    h5::Quiet q;
    hid_t f = impl_->h5file.id();
    for (const auto& [name, value] : info) {
        if (name.empty() || name == "format" || name == "version" || name == "session")
            throw ArchiveError(fmt::format("session attribute '{}' cannot be set", name));
        if (h5::attribute_exists(f, name)) h5::delete_attribute(f, name);
        h5::set_attribute(f, name, value, impl_->kit.str.id(), impl_->kit.scalar.id());
    }
    h5::flush(f);
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
        hid_t f = impl_->h5file.id();
        if (h5::attribute_exists(f, "end_time")) h5::delete_attribute(f, "end_time");
        h5::set_attribute(f, "end_time", iso_now(), impl_->kit.str.id(), impl_->kit.scalar.id());
    } catch (const ArchiveError&) {
        // A session end time that cannot be recorded (a full disk) is no reason to lose the results.
    }
    try {
        h5::flush(impl_->h5file.id());
    } catch (const ArchiveError&) {
        impl_->close_handles();
        throw;
    }
    impl_->blobs.close("H5Dclose");
    impl_->texts.close("H5Dclose");
    impl_->values.close("H5Gclose");
    impl_->index.close("H5Dclose");
    impl_->results.close("H5Dclose");
    impl_->h5file.close("H5Fclose");
}

std::optional<Result> ResultsArchive::read(const JobId& id) const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    std::uint64_t slot = slot_of(id, impl_->session, impl_->file);
    if (!impl_->row_of(slot)) return std::nullopt;
    h5::Quiet q;
    try {
        return impl_->reader().read(id, slot, impl_->file);
    } catch (const ArchiveError& e) {
        throw ArchiveError(fmt::format("cannot read job {} from results archive '{}': {}", id, impl_->file.string(), e.what()));
    }
}

bool ResultsArchive::contains(const JobId& id) const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    return impl_->row_of(slot_of(id, impl_->session, impl_->file)).has_value();
}

std::size_t ResultsArchive::count() const {
    std::lock_guard lk(impl_->mu);
    impl_->require_open();
    return impl_->count;
}

std::string ResultsArchive::location_of(const JobId& id) const {
    std::uint64_t slot = slot_of(id, impl_->session, impl_->file);
    std::lock_guard lk(impl_->mu);
    if (auto row = impl_->row_of(slot)) return location(impl_->file, *row);
    return fmt::format("{}:/{}", impl_->file.string(), kResults); // not archived (yet)
}
const fs::path& ResultsArchive::dir() const { return impl_->dir; }
const fs::path& ResultsArchive::file() const { return impl_->file; }
const std::string& ResultsArchive::session() const { return impl_->session; }

fs::path ResultsArchive::file_of(const fs::path& dir, const std::string& session) {
    return normal_dir(dir) / (session + ".h5");
}

std::optional<Result> ResultsArchive::read_from(const fs::path& dir, const JobId& id) {
    std::string session = JobIdGenerator::session_of(id);
    std::uint64_t slot = JobIdGenerator::sequence_of(id) - 1;
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
        int version = check_layout(f.id(), session, kit, false);
        h5::Dataset results = h5::open_dataset(f.id(), kResults);
        h5::Dataset index = h5::open_dataset(f.id(), kIndex);
        return Reader{kit, f.id(), results.id(), index.id(), version}.read(id, slot, file);
    } catch (const ArchiveError& e) {
        throw ArchiveError(fmt::format("cannot read job {} from results archive '{}': {}", id, file.string(), e.what()));
    }
}

std::vector<std::pair<std::uint64_t, std::string>> ResultsArchive::damaged_rows(const fs::path& file) {
    h5::Quiet q;
    try {
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file(file.string(), false, fapl.id());
        h5::Dataset results = h5::open_dataset(f.id(), kResults);
        return VlenCheck(f.id(), results.id(), file.string()).damaged_rows();
    } catch (const ArchiveError& e) {
        throw ArchiveError(fmt::format("cannot read results archive '{}': {}", file.string(), e.what()));
    }
}

} // namespace dynexec
