// A thin, checked layer over the HDF5 C API, in the spirit of HighFive: every
// raw HDF5 call the archive makes is wrapped here once, and a failure becomes
// an ArchiveError naming the operation, the object ("file.h5:/path") and
// HDF5's own error stack. Internal to the archive: it includes <hdf5.h>, which
// the rest of dynexec never sees. Thread-safe as far as HDF5 is (the
// Debian build is threadsafe: one global lock).
#pragma once

#include "common/errors.hpp"

#include <hdf5.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dynexec::h5 {

// Turns HDF5's automatic error printing off on this thread while alive (the
// setting is per thread); nests cheaply, restores the caller's handler.
class Quiet {
public:
    Quiet();
    ~Quiet();
    Quiet(const Quiet&) = delete;
    Quiet& operator=(const Quiet&) = delete;
};

// A failed HDF5 call. `os_errno` is the errno of the failed system call HDF5
// reports on its error stack (ENOSPC, EIO, ...); 0 if there was none.
struct Error : ArchiveError {
    Error(const std::string& what, int os_errno) : ArchiveError(what), os_errno(os_errno) {}
    int os_errno;
};

// Throws Error for a failed `op` on `object`, with HDF5's error stack.
[[noreturn]] void fail(std::string_view op, const std::string& object);
// "file.h5:/group/name" for error messages; only computed on failure.
std::string describe(hid_t loc, std::string_view name = {});

// Owns one identifier and closes it with the matching H5*close. Move-only.
template <herr_t (*Close)(hid_t)> class Handle {
public:
    Handle() = default;
    explicit Handle(hid_t id) : id_(id) {}
    Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)) {}
    Handle& operator=(Handle&& o) noexcept {
        if (this != &o) {
            reset();
            id_ = std::exchange(o.id_, H5I_INVALID_HID);
        }
        return *this;
    }
    ~Handle() { reset(); }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;

    hid_t id() const { return id_; }
    explicit operator bool() const { return id_ >= 0; }
    // Closes, ignoring errors (destructors, cleanup after a failure).
    void reset() noexcept {
        if (id_ >= 0) {
            Quiet q;
            Close(id_);
        }
        id_ = H5I_INVALID_HID;
    }
    // Closes and reports failure: for a file, a failed close can mean lost data.
    void close(std::string_view op) {
        if (id_ < 0) return;
        Quiet q;
        std::string object = describe(id_);
        hid_t id = std::exchange(id_, H5I_INVALID_HID);
        if (Close(id) < 0) fail(op, object);
    }

private:
    hid_t id_ = H5I_INVALID_HID;
};

using File = Handle<H5Fclose>;
using Group = Handle<H5Gclose>;
using Dataset = Handle<H5Dclose>;
using Space = Handle<H5Sclose>;
using Type = Handle<H5Tclose>;
using Attribute = Handle<H5Aclose>;
using PList = Handle<H5Pclose>;

// Property lists.
PList file_access();                    // new-style groups (libver v18..latest), no file locking
PList group_creation();                 // no timestamps
// Contiguous, allocated on the first write and never filled: one write of the data, nothing else.
PList contiguous_creation();
// Compact: the data lives in the dataset's header (under 64 KiB): one small write, no extra block.
PList compact_creation();
// 1-D chunks of `chunk` elements, no filters; unwritten elements read as `fill` (one element of `type`);
// `never_filled`: new chunks are not filled first (for data only ever written whole).
PList chunked_creation(hsize_t chunk, hid_t type, const void* fill, bool never_filled = false);
// A chunk cache of `bytes` for one dataset.
PList dataset_access(std::size_t bytes);

// Files.
File create_file(const std::string& path, hid_t fapl); // truncates
File open_file(const std::string& path, bool writable, hid_t fapl);
void flush(hid_t file);

// Links and groups.
bool exists(hid_t loc, const std::string& name);
void unlink(hid_t loc, const std::string& name);
Group create_group(hid_t loc, const std::string& name, hid_t gcpl = H5P_DEFAULT);
Group open_group(hid_t loc, const std::string& name);

// Dataspaces.
Space scalar_space();
Space simple_space(std::span<const hsize_t> dims);
Space extendible_space(hsize_t size); // 1-D, size elements, unlimited
Space dataset_space(hid_t dataset);
std::vector<hsize_t> dims(hid_t space); // empty for a scalar

// Datatypes. Predefined ones (H5T_NATIVE_*) are used directly, never wrapped.
Type utf8_string_type();                // variable-length UTF-8, as h5py writes str
Type bool_type();                       // enum int8 {FALSE=0, TRUE=1}, as h5py writes numpy bool
Type fixed_string_type(std::size_t size); // ASCII, NUL-padded
Type short_text_type(std::size_t size, bool utf8 = false); // ASCII or UTF-8, NUL-terminated: h5dump prints just the text
Type vlen_type(hid_t base);               // variable-length sequence of `base`
Type enum_type(std::span<const char* const> names); // uint8: names[i] = i
Type array_type(hid_t base, std::span<const hsize_t> dims);
Type compound_type(std::size_t size);
void insert_member(hid_t compound, const char* name, std::size_t offset, hid_t member);
Type dataset_type(hid_t dataset);
Type attribute_type(hid_t attribute);
H5T_class_t type_class(hid_t type);
std::size_t type_size(hid_t type);
bool is_signed(hid_t type);
bool is_variable_string(hid_t type);

// Datasets.
Dataset create_dataset(hid_t loc, const std::string& name, hid_t type, hid_t space, hid_t dcpl,
                       hid_t dapl = H5P_DEFAULT);
Dataset open_dataset(hid_t loc, const std::string& name, hid_t dapl = H5P_DEFAULT);
void write(hid_t dataset, hid_t mem_type, const void* buf);
void read(hid_t dataset, hid_t mem_type, void* buf);
void set_extent(hid_t dataset, hsize_t size); // of a 1-D dataset
// Elements [start, start + count) of a 1-D dataset, from or to `count` contiguous elements at `buf`.
void write_range(hid_t dataset, hid_t mem_type, hsize_t start, hsize_t count, const void* buf,
                 hid_t dxpl = H5P_DEFAULT);
// A transfer property list whose type-conversion (and background) buffers are `bytes`: HDF5's default is
// 1 MiB, zeroed at every write that converts, which costs more than writing a few rows.
PList conversion_buffer(std::size_t bytes);
// Raw chunks of a 1-D chunked dataset without filters, as the file stores them (no type conversion).
hsize_t chunk_rows(hid_t dataset); // elements per chunk; 0 if it is not such a dataset
void read_chunk(hid_t dataset, hsize_t first, void* buf); // the chunk whose first element is `first`
void write_chunk(hid_t dataset, hsize_t first, const void* buf, std::size_t bytes);
void read_range(hid_t dataset, hid_t mem_type, hsize_t start, hsize_t count, void* buf);

// Attributes.
Attribute create_attribute(hid_t loc, const std::string& name, hid_t type, hid_t space);
Attribute open_attribute(hid_t loc, const std::string& name);
void write_attribute(hid_t attribute, hid_t mem_type, const void* buf);
void read_attribute(hid_t attribute, hid_t mem_type, void* buf);

// Memory HDF5 allocated for us (variable-length strings read back).
void free_memory(void* p);
// Frees what a read of `count` elements of `type` into `buf` allocated (variable-length members).
void reclaim(hid_t type, hsize_t count, void* buf) noexcept;
bool attribute_exists(hid_t loc, const std::string& name);
void delete_attribute(hid_t loc, const std::string& name);

// Typed helpers built on the above.
void set_attribute(hid_t loc, const std::string& name, std::string_view value, hid_t str_type, hid_t scalar);
void set_attribute(hid_t loc, const std::string& name, int value, hid_t scalar);
std::string string_attribute(hid_t loc, const std::string& name, hid_t str_type);
int int_attribute(hid_t loc, const std::string& name);

} // namespace dynexec::h5
