#include "archive/row_image.hpp"

#include "archive/hdf5.hpp"

#include <algorithm>
#include <cstring>

namespace dynexec {

std::uint32_t HeapRef::length() const {
    std::uint32_t n = 0;
    for (int i = 3; i >= 0; --i) n = (n << 8) | raw[static_cast<std::size_t>(i)];
    return n;
}

bool HeapRef::null() const {
    for (std::size_t i = 4; i < 12; ++i) // the collection's address
        if (raw[i]) return false;
    return true;
}

std::optional<RowImage> RowImage::of(hid_t mem_row, hid_t file_row, std::size_t sizeof_addr) {
    if (sizeof_addr != 8) return std::nullopt;
    h5::Quiet q;
    int n = H5Tget_nmembers(mem_row);
    if (n <= 0 || H5Tget_nmembers(file_row) != n) return std::nullopt;
    // In the file the members lie packed in the order of their offsets, each variable-length one a reference
    // (the offsets libhdf5 reports are those of the type in memory, where such a member is a pointer or hvl_t).
    std::vector<std::pair<std::size_t, unsigned>> order;
    for (unsigned u = 0; u < static_cast<unsigned>(n); ++u) order.emplace_back(H5Tget_member_offset(file_row, u), u);
    std::sort(order.begin(), order.end());
    RowImage image;
    for (auto [file_offset, u] : order) {
        h5::Type mem(H5Tget_member_type(mem_row, u)), file(H5Tget_member_type(file_row, u));
        if (!mem || !file) return std::nullopt;
        const std::size_t from = H5Tget_member_offset(mem_row, u), to = image.size_;
        H5T_class_t cls = H5Tget_class(mem.id());
        bool string = cls == H5T_STRING && H5Tis_variable_str(mem.id()) > 0;
        if (string || cls == H5T_VLEN) {
            if (cls == H5T_VLEN) {
                h5::Type base(H5Tget_super(mem.id()));
                if (!base || H5Tget_class(base.id()) != H5T_INTEGER || H5Tget_size(base.id()) != 1) return std::nullopt;
            }
            if (H5Tequal(mem.id(), file.id()) <= 0) return std::nullopt;
            char* name = H5Tget_member_name(mem_row, u);
            image.refs_.push_back({name ? name : "", from, string});
            H5free_memory(name);
            image.ref_offsets_.push_back(to);
            image.size_ += sizeof(HeapRef::raw);
            continue;
        }
        if (H5Tequal(mem.id(), file.id()) <= 0 || H5Tdetect_class(mem.id(), H5T_VLEN) != 0) return std::nullopt;
        std::size_t size = H5Tget_size(mem.id());
        image.copies_.push_back({from, to, size});
        image.size_ += size;
    }
    return image;
}

void RowImage::copy_fixed(const void* row, unsigned char* out) const {
    const auto* in = static_cast<const unsigned char*>(row);
    for (const Copy& c : copies_) std::memcpy(out + c.to, in + c.from, c.size);
}

} // namespace dynexec
