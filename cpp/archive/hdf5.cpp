#include "archive/hdf5.hpp"

#include "common/errors.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <system_error>

namespace dynexec::h5 {
namespace {

thread_local int quiet_depth = 0;
thread_local H5E_auto2_t saved_func = nullptr;
thread_local void* saved_data = nullptr;
thread_local bool saved_ok = false;

// Checks the return of a raw call: negative means failure in every HDF5 type (hid_t, herr_t, htri_t, ssize_t).
template <class T> T check(T v, std::string_view op, hid_t loc, std::string_view name = {}) {
    if (v < 0) fail(op, describe(loc, name));
    return v;
}
template <class T> T check(T v, std::string_view op, const std::string& object) {
    if (v < 0) fail(op, object);
    return v;
}

struct Stack {
    std::string text;
    int os_errno = 0;
};

// The errno HDF5's file drivers write into their messages ("..., errno = 28, error message = ...").
int errno_in(std::string_view desc) {
    auto at = desc.find("errno = ");
    if (at == std::string_view::npos) return 0;
    int v = 0;
    for (auto i = at + 8; i < desc.size() && desc[i] >= '0' && desc[i] <= '9' && v < 100000; ++i) v = v * 10 + (desc[i] - '0');
    return v;
}

herr_t collect(unsigned, const H5E_error2_t* e, void* data) {
    auto& stack = *static_cast<Stack*>(data);
    auto& out = stack.text;
    if (!stack.os_errno && e->desc) stack.os_errno = errno_in(e->desc);
    std::string line = fmt::format("{}(): {}", e->func_name ? e->func_name : "?", e->desc ? e->desc : "");
    for (auto& c : line)
        if (c == '\n') c = ' '; // some descriptions embed a ctime() date
    if (out.find(line) != std::string::npos) return 0;
    if (!out.empty()) out += "; ";
    out += line;
    return 0;
}

// The current thread's error stack, outermost call first, then cleared.
Stack error_stack() {
    Stack out;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &out);
    H5Eclear2(H5E_DEFAULT);
    if (out.text.empty()) out.text = "no HDF5 error message";
    return out;
}

} // namespace

Quiet::Quiet() {
    if (quiet_depth++ > 0) return;
    saved_ok = H5Eget_auto2(H5E_DEFAULT, &saved_func, &saved_data) >= 0;
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

Quiet::~Quiet() {
    if (--quiet_depth > 0) return;
    if (saved_ok) H5Eset_auto2(H5E_DEFAULT, saved_func, saved_data);
}

void fail(std::string_view op, const std::string& object) {
    Stack stack = error_stack();
    // The OS error first: it is what a user can act on (a full disk, a failing device).
    std::string os = stack.os_errno ? fmt::format("{} (errno {}); ", std::error_code(stack.os_errno, std::generic_category()).message(), stack.os_errno) : "";
    throw Error(fmt::format("HDF5 {} failed on '{}': {}{}", op, object, os, stack.text), stack.os_errno);
}

std::string describe(hid_t loc, std::string_view name) {
    // Called while an error is pending: these calls must not disturb the stack, so save it.
    Quiet q;
    hid_t stack = H5Eget_current_stack();
    std::string file, object;
    if (ssize_t n = H5Fget_name(loc, nullptr, 0); n > 0) {
        file.resize(static_cast<std::size_t>(n) + 1);
        H5Fget_name(loc, file.data(), file.size());
        file.resize(static_cast<std::size_t>(n));
    }
    if (ssize_t n = H5Iget_name(loc, nullptr, 0); n > 0) {
        object.resize(static_cast<std::size_t>(n) + 1);
        H5Iget_name(loc, object.data(), object.size());
        object.resize(static_cast<std::size_t>(n));
    }
    if (stack >= 0) H5Eset_current_stack(stack); // also closes `stack`
    if (!name.empty()) object += (object.empty() || object.back() != '/' ? "/" : "") + std::string(name);
    if (file.empty()) return object.empty() ? fmt::format("<hid {}>", loc) : object;
    return object.empty() ? file : file + ":" + object;
}

// --- property lists ---------------------------------------------------------

PList file_access() {
    Quiet q;
    PList p(check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate(file access)", "<plist>"));
    // v18 lower bound: new-style groups whose links go to dense storage, fit for millions of jobs.
    check(H5Pset_libver_bounds(p.id(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), "H5Pset_libver_bounds", "<plist>");
    // No flock(): a reader in another process (h5py, h5dump, a later session) must never block on us.
    check(H5Pset_file_locking(p.id(), false, true), "H5Pset_file_locking", "<plist>");
    return p;
}

PList group_creation() {
    Quiet q;
    PList p(check(H5Pcreate(H5P_GROUP_CREATE), "H5Pcreate(group create)", "<plist>"));
    check(H5Pset_obj_track_times(p.id(), false), "H5Pset_obj_track_times", "<plist>");
    return p;
}

PList contiguous_creation() {
    Quiet q;
    PList p(check(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate(dataset create)", "<plist>"));
    check(H5Pset_layout(p.id(), H5D_CONTIGUOUS), "H5Pset_layout", "<plist>");
    // Filling first would write every byte twice.
    check(H5Pset_fill_time(p.id(), H5D_FILL_TIME_NEVER), "H5Pset_fill_time", "<plist>");
    check(H5Pset_obj_track_times(p.id(), false), "H5Pset_obj_track_times", "<plist>");
    return p;
}

PList compact_creation() {
    Quiet q;
    PList p(check(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate(dataset create)", "<plist>"));
    check(H5Pset_layout(p.id(), H5D_COMPACT), "H5Pset_layout", "<plist>");
    check(H5Pset_fill_time(p.id(), H5D_FILL_TIME_NEVER), "H5Pset_fill_time", "<plist>");
    check(H5Pset_obj_track_times(p.id(), false), "H5Pset_obj_track_times", "<plist>");
    return p;
}

PList chunked_creation(hsize_t chunk, hid_t type, const void* fill, bool never_filled) {
    Quiet q;
    PList p(check(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate(dataset create)", "<plist>"));
    check(H5Pset_chunk(p.id(), 1, &chunk), "H5Pset_chunk", "<plist>");
    // HDF5's default fill value (zeros), which for the default fill time IFSET is never written.
    if (!never_filled) check(H5Pset_fill_value(p.id(), type, fill), "H5Pset_fill_value", "<plist>");
    check(H5Pset_obj_track_times(p.id(), false), "H5Pset_obj_track_times", "<plist>");
    return p;
}

PList dataset_access(std::size_t bytes) {
    Quiet q;
    PList p(check(H5Pcreate(H5P_DATASET_ACCESS), "H5Pcreate(dataset access)", "<plist>"));
    // 521 slots (a prime, HDF5's default) is plenty for the few chunks a batch touches.
    check(H5Pset_chunk_cache(p.id(), 521, bytes, 1.0), "H5Pset_chunk_cache", "<plist>");
    return p;
}

// --- files ------------------------------------------------------------------

File create_file(const std::string& path, hid_t fapl) {
    Quiet q;
    return File(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "H5Fcreate", path));
}

File open_file(const std::string& path, bool writable, hid_t fapl) {
    Quiet q;
    return File(check(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl), "H5Fopen", path));
}

void flush(hid_t file) {
    Quiet q;
    check(H5Fflush(file, H5F_SCOPE_LOCAL), "H5Fflush", file);
}

// --- links and groups -------------------------------------------------------

bool exists(hid_t loc, const std::string& name) {
    Quiet q;
    return check(H5Lexists(loc, name.c_str(), H5P_DEFAULT), "H5Lexists", loc, name) > 0;
}

void unlink(hid_t loc, const std::string& name) {
    Quiet q;
    check(H5Ldelete(loc, name.c_str(), H5P_DEFAULT), "H5Ldelete", loc, name);
}

Group create_group(hid_t loc, const std::string& name, hid_t gcpl) {
    Quiet q;
    return Group(check(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl, H5P_DEFAULT), "H5Gcreate2", loc, name));
}

Group open_group(hid_t loc, const std::string& name) {
    Quiet q;
    return Group(check(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), "H5Gopen2", loc, name));
}

// --- dataspaces -------------------------------------------------------------

Space scalar_space() {
    Quiet q;
    return Space(check(H5Screate(H5S_SCALAR), "H5Screate(scalar)", "<dataspace>"));
}

Space simple_space(std::span<const hsize_t> dims) {
    Quiet q;
    return Space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "H5Screate_simple",
                       fmt::format("<dataspace of rank {}>", dims.size())));
}

Space extendible_space(hsize_t size) {
    Quiet q;
    hsize_t max = H5S_UNLIMITED;
    return Space(check(H5Screate_simple(1, &size, &max), "H5Screate_simple", "<extendible dataspace>"));
}

Space dataset_space(hid_t dataset) {
    Quiet q;
    return Space(check(H5Dget_space(dataset), "H5Dget_space", dataset));
}

std::vector<hsize_t> dims(hid_t space) {
    Quiet q;
    int rank = check(H5Sget_simple_extent_ndims(space), "H5Sget_simple_extent_ndims", "<dataspace>");
    std::vector<hsize_t> d(static_cast<std::size_t>(rank));
    if (rank > 0) check(H5Sget_simple_extent_dims(space, d.data(), nullptr), "H5Sget_simple_extent_dims", "<dataspace>");
    return d;
}

// --- datatypes --------------------------------------------------------------

Type utf8_string_type() {
    Quiet q;
    Type t(check(H5Tcopy(H5T_C_S1), "H5Tcopy(H5T_C_S1)", "<datatype>"));
    check(H5Tset_size(t.id(), H5T_VARIABLE), "H5Tset_size(H5T_VARIABLE)", "<datatype>");
    check(H5Tset_cset(t.id(), H5T_CSET_UTF8), "H5Tset_cset(UTF-8)", "<datatype>");
    return t;
}

Type bool_type() {
    Quiet q;
    Type t(check(H5Tenum_create(H5T_NATIVE_INT8), "H5Tenum_create", "<datatype>"));
    std::int8_t no = 0, yes = 1;
    check(H5Tenum_insert(t.id(), "FALSE", &no), "H5Tenum_insert(FALSE)", "<datatype>");
    check(H5Tenum_insert(t.id(), "TRUE", &yes), "H5Tenum_insert(TRUE)", "<datatype>");
    return t;
}

Type fixed_string_type(std::size_t size) {
    Quiet q;
    Type t(check(H5Tcopy(H5T_C_S1), "H5Tcopy(H5T_C_S1)", "<datatype>"));
    check(H5Tset_size(t.id(), size), "H5Tset_size", "<datatype>");
    check(H5Tset_strpad(t.id(), H5T_STR_NULLPAD), "H5Tset_strpad", "<datatype>");
    return t;
}

Type short_text_type(std::size_t size, bool utf8) {
    Quiet q;
    Type t(check(H5Tcopy(H5T_C_S1), "H5Tcopy(H5T_C_S1)", "<datatype>"));
    check(H5Tset_size(t.id(), size), "H5Tset_size", "<datatype>");
    check(H5Tset_strpad(t.id(), H5T_STR_NULLTERM), "H5Tset_strpad", "<datatype>");
    if (utf8) check(H5Tset_cset(t.id(), H5T_CSET_UTF8), "H5Tset_cset(UTF-8)", "<datatype>");
    return t;
}

Type vlen_type(hid_t base) {
    Quiet q;
    return Type(check(H5Tvlen_create(base), "H5Tvlen_create", "<datatype>"));
}

Type enum_type(std::span<const char* const> names) {
    Quiet q;
    Type t(check(H5Tenum_create(H5T_NATIVE_UINT8), "H5Tenum_create", "<datatype>"));
    for (std::size_t i = 0; i < names.size(); ++i) {
        auto v = static_cast<std::uint8_t>(i);
        check(H5Tenum_insert(t.id(), names[i], &v), "H5Tenum_insert", fmt::format("<enum member {}>", names[i]));
    }
    return t;
}

Type array_type(hid_t base, std::span<const hsize_t> dims) {
    Quiet q;
    return Type(check(H5Tarray_create2(base, static_cast<unsigned>(dims.size()), dims.data()), "H5Tarray_create2",
                      "<datatype>"));
}

Type compound_type(std::size_t size) {
    Quiet q;
    return Type(check(H5Tcreate(H5T_COMPOUND, size), "H5Tcreate(compound)", "<datatype>"));
}

void insert_member(hid_t compound, const char* name, std::size_t offset, hid_t member) {
    Quiet q;
    check(H5Tinsert(compound, name, offset, member), "H5Tinsert", fmt::format("<compound member {}>", name));
}

Type dataset_type(hid_t dataset) {
    Quiet q;
    return Type(check(H5Dget_type(dataset), "H5Dget_type", dataset));
}

Type attribute_type(hid_t attribute) {
    Quiet q;
    return Type(check(H5Aget_type(attribute), "H5Aget_type", attribute));
}

H5T_class_t type_class(hid_t type) {
    Quiet q;
    return check(H5Tget_class(type), "H5Tget_class", "<datatype>");
}

std::size_t type_size(hid_t type) {
    Quiet q;
    std::size_t n = H5Tget_size(type); // returns 0 on failure
    if (n == 0) fail("H5Tget_size", "<datatype>");
    return n;
}

bool is_signed(hid_t type) {
    Quiet q;
    return check(H5Tget_sign(type), "H5Tget_sign", "<datatype>") == H5T_SGN_2;
}

bool is_variable_string(hid_t type) {
    Quiet q;
    return check(H5Tis_variable_str(type), "H5Tis_variable_str", "<datatype>") > 0;
}

// --- datasets ---------------------------------------------------------------

Dataset create_dataset(hid_t loc, const std::string& name, hid_t type, hid_t space, hid_t dcpl, hid_t dapl) {
    Quiet q;
    return Dataset(
        check(H5Dcreate2(loc, name.c_str(), type, space, H5P_DEFAULT, dcpl, dapl), "H5Dcreate2", loc, name));
}

Dataset open_dataset(hid_t loc, const std::string& name, hid_t dapl) {
    Quiet q;
    return Dataset(check(H5Dopen2(loc, name.c_str(), dapl), "H5Dopen2", loc, name));
}

void write(hid_t dataset, hid_t mem_type, const void* buf) {
    Quiet q;
    check(H5Dwrite(dataset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), "H5Dwrite", dataset);
}

void read(hid_t dataset, hid_t mem_type, void* buf) {
    Quiet q;
    check(H5Dread(dataset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), "H5Dread", dataset);
}

void set_extent(hid_t dataset, hsize_t size) {
    Quiet q;
    check(H5Dset_extent(dataset, &size), "H5Dset_extent", dataset);
}

namespace {

// The file and memory dataspaces of elements [start, start + count) of a 1-D dataset.
std::pair<Space, Space> range_spaces(hid_t dataset, hsize_t start, hsize_t count) {
    Space file = dataset_space(dataset);
    check(H5Sselect_hyperslab(file.id(), H5S_SELECT_SET, &start, nullptr, &count, nullptr), "H5Sselect_hyperslab",
          dataset);
    return {std::move(file), simple_space(std::span(&count, 1))};
}

} // namespace

void write_range(hid_t dataset, hid_t mem_type, hsize_t start, hsize_t count, const void* buf, hid_t dxpl) {
    Quiet q;
    auto [file, mem] = range_spaces(dataset, start, count);
    check(H5Dwrite(dataset, mem_type, mem.id(), file.id(), dxpl, buf), "H5Dwrite", dataset);
}

PList conversion_buffer(std::size_t bytes) {
    Quiet q;
    PList p(check(H5Pcreate(H5P_DATASET_XFER), "H5Pcreate(dataset transfer)", "<plist>"));
    check(H5Pset_buffer(p.id(), bytes, nullptr, nullptr), "H5Pset_buffer", "<plist>");
    return p;
}

hsize_t chunk_rows(hid_t dataset) {
    Quiet q;
    PList dcpl(check(H5Dget_create_plist(dataset), "H5Dget_create_plist", dataset));
    hsize_t chunk[1] = {0};
    if (H5Pget_layout(dcpl.id()) != H5D_CHUNKED || H5Pget_nfilters(dcpl.id()) != 0 || H5Pget_chunk(dcpl.id(), 1, chunk) != 1)
        return 0;
    return chunk[0];
}

void read_chunk(hid_t dataset, hsize_t first, void* buf) {
    Quiet q;
    std::uint32_t filters = 0;
    check(H5Dread_chunk(dataset, H5P_DEFAULT, &first, &filters, buf), "H5Dread_chunk", dataset);
}

void write_chunk(hid_t dataset, hsize_t first, const void* buf, std::size_t bytes) {
    Quiet q;
    check(H5Dwrite_chunk(dataset, H5P_DEFAULT, 0, &first, bytes, buf), "H5Dwrite_chunk", dataset);
}

void read_range(hid_t dataset, hid_t mem_type, hsize_t start, hsize_t count, void* buf) {
    Quiet q;
    auto [file, mem] = range_spaces(dataset, start, count);
    check(H5Dread(dataset, mem_type, mem.id(), file.id(), H5P_DEFAULT, buf), "H5Dread", dataset);
}

// --- attributes -------------------------------------------------------------

Attribute create_attribute(hid_t loc, const std::string& name, hid_t type, hid_t space) {
    Quiet q;
    return Attribute(
        check(H5Acreate2(loc, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), "H5Acreate2", loc, "@" + name));
}

Attribute open_attribute(hid_t loc, const std::string& name) {
    Quiet q;
    return Attribute(check(H5Aopen(loc, name.c_str(), H5P_DEFAULT), "H5Aopen", loc, "@" + name));
}

void write_attribute(hid_t attribute, hid_t mem_type, const void* buf) {
    Quiet q;
    check(H5Awrite(attribute, mem_type, buf), "H5Awrite", attribute);
}

void read_attribute(hid_t attribute, hid_t mem_type, void* buf) {
    Quiet q;
    check(H5Aread(attribute, mem_type, buf), "H5Aread", attribute);
}

void free_memory(void* p) {
    Quiet q;
    if (p) check(H5free_memory(p), "H5free_memory", "<memory>");
}

// --- typed helpers ----------------------------------------------------------

void reclaim(hid_t type, hsize_t count, void* buf) noexcept {
    Quiet q;
    hid_t space = H5Screate_simple(1, &count, nullptr);
    if (space < 0) return;
    H5Dvlen_reclaim(type, space, H5P_DEFAULT, buf);
    H5Sclose(space);
}

bool attribute_exists(hid_t loc, const std::string& name) {
    Quiet q;
    return check(H5Aexists(loc, name.c_str()), "H5Aexists", loc, name) > 0;
}

void delete_attribute(hid_t loc, const std::string& name) {
    Quiet q;
    check(H5Adelete(loc, name.c_str()), "H5Adelete", loc, name);
}

void set_attribute(hid_t loc, const std::string& name, std::string_view value, hid_t str_type, hid_t scalar) {
    // Variable-length C strings end at the first NUL: refuse rather than truncate silently.
    if (value.find('\0') != std::string_view::npos)
        throw ArchiveError(fmt::format("attribute '{}' of '{}' contains a NUL character", name, describe(loc)));
    std::string copy(value); // NUL-terminated
    const char* p = copy.c_str();
    Attribute a = create_attribute(loc, name, str_type, scalar);
    write_attribute(a.id(), str_type, &p);
}

void set_attribute(hid_t loc, const std::string& name, int value, hid_t scalar) {
    static_assert(sizeof(int) == 4);
    Attribute a = create_attribute(loc, name, H5T_NATIVE_INT32, scalar);
    write_attribute(a.id(), H5T_NATIVE_INT32, &value);
}

namespace {

// Fixed-length strings (another writer's) come back NUL- or space-padded.
std::string trim_fixed(std::string s) {
    auto end = s.find('\0');
    if (end != std::string::npos) s.resize(end);
    return s;
}

} // namespace

std::string string_attribute(hid_t loc, const std::string& name, hid_t str_type) {
    Attribute a = open_attribute(loc, name);
    Type t = attribute_type(a.id());
    if (type_class(t.id()) != H5T_STRING)
        throw ArchiveError(fmt::format("attribute '{}' of '{}' is not a string", name, describe(loc)));
    if (!is_variable_string(t.id())) {
        std::string s(type_size(t.id()), '\0');
        read_attribute(a.id(), t.id(), s.data());
        return trim_fixed(std::move(s));
    }
    char* p = nullptr;
    read_attribute(a.id(), str_type, &p);
    std::string s = p ? p : "";
    free_memory(p);
    return s;
}

int int_attribute(hid_t loc, const std::string& name) {
    Attribute a = open_attribute(loc, name);
    int v = 0;
    read_attribute(a.id(), H5T_NATIVE_INT32, &v);
    return v;
}

} // namespace dynexec::h5
