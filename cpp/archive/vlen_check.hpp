// Checks the variable-length references (strings, vlen sequences) of rows of
// a chunked compound dataset against the file itself, before libhdf5 follows
// them. libhdf5 1.10 trusts the length and the global heap ID stored in each
// element on disk: one flipped byte there makes H5Dread crash or read wild
// memory. A row with a bad reference is a row that cannot be decoded.
// On disk a vlen element is a 4-byte sequence length, then the address of a
// global heap collection ("GCOL", size of offsets) and a 4-byte object index
// (HDF5 file format specification, "Global Heap").
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dynexec {

class VlenCheck {
public:
    // Throws ArchiveError naming `path` if the rows cannot be checked (a
    // filtered dataset, an unexpected layout): reading them would not be safe.
    VlenCheck(hid_t file, hid_t dataset, std::string path);
    ~VlenCheck();
    VlenCheck(const VlenCheck&) = delete;
    VlenCheck& operator=(const VlenCheck&) = delete;

    // "" if every reference of `row` is sound, else why not ("its service
    // points past the end of the file", ...). Collections seen are cached.
    std::string check(std::uint64_t row);
    // Every row of the dataset that must not be read, with why, in row order.
    std::vector<std::pair<std::uint64_t, std::string>> damaged_rows();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace dynexec
