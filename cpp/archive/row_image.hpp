// The file image of rows of a compound table: what H5Dwrite_chunk takes, so
// that rows reach the file without libhdf5's type conversion. Numbers and
// fixed-size strings are copied; each variable-length member (a string or a
// sequence) is a reference to an object of a global heap collection, as HDF5
// stores it: a 4-byte length, the collection's address, a 4-byte object index.
// Rows built this way may share one heap object (libhdf5 never does): they
// must never be written over through libhdf5, which would free the object.
#pragma once

#include <hdf5.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dynexec {

// A variable-length element as the file stores it (8-byte file addresses).
struct HeapRef {
    std::array<unsigned char, 16> raw{};                   // all zeros: a null string or empty sequence
    std::uint32_t length() const;                          // elements (bytes of a string)
    bool null() const;                                     // no heap object
};

class RowImage {
public:
    struct Reference {
        std::string name;   // of the member
        std::size_t offset; // in the memory row: a const char* (string) or an hvl_t (sequence)
        bool string;
    };

    // The image of `mem_row` (a compound of native members, variable-length strings as char*) in the file type
    // `file_row` (its packed copy), for files whose addresses are `sizeof_addr` bytes; nullopt when this layout
    // cannot be built by hand (other address sizes, nested sequences, members that differ but for packing).
    static std::optional<RowImage> of(hid_t mem_row, hid_t file_row, std::size_t sizeof_addr);

    std::size_t size() const { return size_; } // bytes per row in the file
    const std::vector<Reference>& references() const { return refs_; }
    // Writes the numbers and fixed-size strings of `row` to its image `out` (size() bytes)...
    void copy_fixed(const void* row, unsigned char* out) const;
    // ... and its k-th variable-length member as `ref`.
    void put(unsigned char* out, std::size_t k, const HeapRef& ref) const {
        std::copy(ref.raw.begin(), ref.raw.end(), out + ref_offsets_[k]);
    }

private:
    struct Copy {
        std::size_t from, to, size;
    };
    std::vector<Copy> copies_;
    std::vector<std::size_t> ref_offsets_; // in the file row, by reference
    std::vector<Reference> refs_;
    std::size_t size_ = 0;
};

} // namespace dynexec
