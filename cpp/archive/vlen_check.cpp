#include "archive/vlen_check.hpp"

#include "archive/hdf5.hpp"
#include "common/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <optional>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace dynexec {

namespace {

std::uint64_t little(const unsigned char* p, std::size_t n) {
    std::uint64_t v = 0;
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(&v, p, n);
    } else {
        for (std::size_t i = n; i-- > 0;) v = (v << 8) | p[i];
    }
    return v;
}

constexpr std::uint64_t kAbsent = ~std::uint64_t{0};

struct Member {
    std::string name;
    std::size_t offset;    // in the row as stored in the file
    std::size_t base_size; // bytes per element of the sequence (1 for a string)
};

// One global heap collection, walked only as far as the objects asked for so far: its objects' sizes by
// index, or why it is not one.
struct Collection {
    std::string error;
    std::vector<std::uint64_t> sizes;       // kAbsent: no such object (yet)
    std::unique_ptr<unsigned char[]> data;  // until walked to its end
    std::uint64_t size = 0, next = 0;       // its size; where the next object not walked yet starts
};

} // namespace

struct VlenCheck::Impl {
    std::string path;
    hid_t dataset;
    int fd = -1;
    bool own_fd = false;
    std::uint64_t eof = 0;
    std::size_t sizeof_addr = 8, sizeof_size = 8;
    std::size_t row_size = 0;
    hsize_t chunk_rows = 0, rows = 0;
    std::vector<Member> members;
    std::map<std::uint64_t, Collection> collections;
    std::vector<unsigned char> buf;

    [[noreturn]] void unsafe(const std::string& why) const {
        throw ArchiveError(fmt::format("cannot check the string references of '{}:/results' before reading them: {}", path, why));
    }

    bool read_at(std::uint64_t at, std::size_t n, unsigned char* out) const {
        std::size_t done = 0;
        while (done < n) {
            ssize_t got = ::pread(fd, out + done, n - done, static_cast<off_t>(at + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return false;
            done += static_cast<std::size_t>(got);
        }
        return true;
    }

    Collection& collection(std::uint64_t addr) {
        auto it = collections.find(addr);
        if (it != collections.end()) return it->second;
        Collection c;
        const std::size_t header = 8 + sizeof_size;
        unsigned char head[32];
        if (addr > eof || header > eof - addr || !read_at(addr, header, head)) {
            c.error = fmt::format("its heap collection at byte {} lies past the end of the file", addr);
        } else if (std::memcmp(head, "GCOL", 4) != 0 || head[4] != 1) {
            c.error = fmt::format("no heap collection at byte {}", addr);
        } else {
            c.size = little(head + 8, sizeof_size);
            if (c.size < header || c.size > eof - addr) {
                c.error = fmt::format("the heap collection at byte {} claims {} bytes, past the end of the file", addr, c.size);
            } else {
                c.data.reset(new unsigned char[c.size]); // uninitialised: read over whole
                if (!read_at(addr, c.size, c.data.get())) c.error = fmt::format("the heap collection at byte {} cannot be read", addr);
                c.next = header;
                c.sizes.reserve(c.size / 64);
            }
        }
        return collections.emplace(addr, std::move(c)).first->second;
    }

    // The size of object `index` of the collection at `addr`, or why there is none. Its objects: index (2),
    // reference count (2), reserved (4), size (size of lengths), data padded to 8; index 0 is the free space.
    std::uint64_t object_size(std::uint64_t addr, std::uint64_t index, std::string& why) {
        Collection& c = collection(addr);
        const std::size_t object_header = 8 + sizeof_size;
        while (c.error.empty() && (index >= c.sizes.size() || c.sizes[index] == kAbsent) && c.data) {
            if (c.next + object_header > c.size || little(&c.data[c.next], 2) == 0) {
                c.data.reset(); // walked to its end
                break;
            }
            std::uint64_t i = little(&c.data[c.next], 2), n = little(&c.data[c.next + 8], sizeof_size);
            if (n > c.size - c.next - object_header) {
                c.error = fmt::format("object {} of the heap collection at byte {} runs past its end", i, addr);
                break;
            }
            if (c.sizes.size() <= i) c.sizes.resize(i + 1, kAbsent);
            c.sizes[i] = n;
            c.next += object_header + (n + 7) / 8 * 8;
        }
        if (!c.error.empty()) {
            c.data.reset();
            why = c.error;
        } else if (index == 0 || index >= c.sizes.size() || c.sizes[index] == kAbsent) {
            why = fmt::format("the heap collection at byte {} has no object {}", addr, index);
        } else {
            return c.sizes[index];
        }
        return kAbsent;
    }

    std::string check_bytes(const unsigned char* row) {
        for (const Member& m : members) {
            const unsigned char* p = row + m.offset;
            std::uint64_t length = little(p, 4), addr = little(p + 4, sizeof_addr), index = little(p + 4 + sizeof_addr, 4);
            if (addr == 0) continue; // a null reference: libhdf5 reads it as empty without looking at the length
            std::string why;
            std::uint64_t size = object_size(addr, index, why);
            if (why.empty() && length * m.base_size != size)
                why = fmt::format("its length {} does not match its heap object ({} bytes)", length, size);
            if (!why.empty()) return fmt::format("its {} has a damaged reference: {}", m.name, why);
        }
        return {};
    }

    // Reads the chunk holding `row` into buf (through the chunk index, as H5Dread finds it; H5Dget_chunk_info
    // walks every chunk). False if it has none (it reads as the fill value) or cannot be read (then why says so).
    bool read_chunk(hsize_t row, std::string& why) {
        hsize_t coord[1] = {row / chunk_rows * chunk_rows};
        hsize_t size = 0;
        h5::Quiet q;
        if (H5Dget_chunk_storage_size(dataset, coord, &size) < 0) {
            why = fmt::format("the chunk of row {} cannot be found", row);
            return false;
        }
        if (size == 0) return false;
        if (size != chunk_rows * row_size) {
            why = fmt::format("the chunk of row {} holds {} bytes, not {}", row, size, chunk_rows * row_size);
            return false;
        }
        buf.resize(size);
        std::uint32_t filters = 0;
        if (H5Dread_chunk(dataset, H5P_DEFAULT, coord, &filters, buf.data()) < 0) {
            why = fmt::format("the chunk of row {} cannot be read", row);
            return false;
        }
        return true;
    }
};

VlenCheck::VlenCheck(hid_t file, hid_t dataset, std::string path) : impl_(std::make_unique<Impl>()) {
    Impl& d = *impl_;
    d.path = std::move(path);
    d.dataset = dataset;
    h5::Quiet q;
    {
        h5::PList fcpl(H5Fget_create_plist(file));
        if (!fcpl || H5Pget_sizes(fcpl.id(), &d.sizeof_addr, &d.sizeof_size) < 0) d.unsafe("its superblock cannot be read");
        if (d.sizeof_addr > 8 || d.sizeof_size > 8 || d.sizeof_addr == 0 || d.sizeof_size == 0)
            d.unsafe(fmt::format("its offsets are {} bytes and its lengths {}", d.sizeof_addr, d.sizeof_size));
    }
    h5::PList dcpl(H5Dget_create_plist(dataset));
    if (!dcpl || H5Pget_layout(dcpl.id()) != H5D_CHUNKED) d.unsafe("it is not chunked");
    if (H5Pget_nfilters(dcpl.id()) != 0) d.unsafe("its chunks are filtered (compressed)");
    hsize_t chunk[1] = {0};
    if (H5Pget_chunk(dcpl.id(), 1, chunk) != 1 || chunk[0] == 0) d.unsafe("it is not a 1-D chunked table");
    d.chunk_rows = chunk[0];
    {
        h5::Space space(H5Dget_space(dataset));
        hsize_t dims[1] = {0};
        if (!space || H5Sget_simple_extent_ndims(space.id()) != 1 || H5Sget_simple_extent_dims(space.id(), dims, nullptr) < 0)
            d.unsafe("it is not 1-D");
        d.rows = dims[0];
    }
    // The members in the order stored, with the sizes they have in the file (a vlen there is a length and a heap ID).
    h5::Type type(H5Dget_type(dataset));
    if (!type || H5Tget_class(type.id()) != H5T_COMPOUND) d.unsafe("it is not a compound table");
    // Every archive has the same row type: its layout is worked out once per process (one call per member adds up).
    static std::mutex cache_mu;
    static hid_t cached_type = H5I_INVALID_HID; // never closed: it may outlive the library at exit
    static std::size_t cached_addr = 0, cached_row_size = 0;
    static std::vector<Member> cached_members;
    {
        std::lock_guard lk(cache_mu);
        if (cached_type >= 0 && cached_addr == d.sizeof_addr && H5Tequal(cached_type, type.id()) > 0) {
            d.members = cached_members;
            d.row_size = cached_row_size;
        }
    }
    if (d.row_size == 0) {
        int n = H5Tget_nmembers(type.id());
        std::vector<std::pair<std::size_t, int>> order;
        for (int i = 0; i < n; ++i) order.emplace_back(H5Tget_member_offset(type.id(), static_cast<unsigned>(i)), i);
        std::sort(order.begin(), order.end());
        for (auto [mem_offset, i] : order) {
            h5::Type m(H5Tget_member_type(type.id(), static_cast<unsigned>(i)));
            char* name = H5Tget_member_name(type.id(), static_cast<unsigned>(i));
            std::string member = name ? name : "?";
            H5free_memory(name);
            H5T_class_t cls = H5Tget_class(m.id());
            bool vlen = cls == H5T_VLEN || (cls == H5T_STRING && H5Tis_variable_str(m.id()) > 0);
            if (vlen) {
                std::size_t base = 1;
                if (cls == H5T_VLEN) {
                    h5::Type super(H5Tget_super(m.id()));
                    if (!super || H5Tdetect_class(super.id(), H5T_VLEN) != 0) d.unsafe(fmt::format("member {} nests sequences", member));
                    base = H5Tget_size(super.id());
                }
                d.members.push_back({member, d.row_size, base});
                d.row_size += 4 + d.sizeof_addr + 4;
            } else {
                if (H5Tdetect_class(m.id(), H5T_VLEN) != 0) d.unsafe(fmt::format("member {} holds sequences inside", member));
                d.row_size += H5Tget_size(m.id());
            }
        }
        std::lock_guard lk(cache_mu);
        if (cached_type >= 0) H5Tclose(cached_type);
        cached_type = H5Tcopy(type.id());
        cached_addr = d.sizeof_addr;
        cached_row_size = d.row_size;
        cached_members = d.members;
    }
    // The file's own descriptor where HDF5 has one (the path may have gone since), else a descriptor of our own.
    void* handle = nullptr;
    h5::PList fapl(H5Fget_access_plist(file));
    if (fapl && H5Pget_driver(fapl.id()) == H5FD_SEC2 && H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) >= 0 && handle) {
        d.fd = *static_cast<int*>(handle);
    } else {
        d.fd = ::open(d.path.c_str(), O_RDONLY | O_CLOEXEC);
        d.own_fd = true;
    }
    struct stat st {};
    if (d.fd < 0 || ::fstat(d.fd, &st) != 0) d.unsafe(std::strerror(errno));
    d.eof = static_cast<std::uint64_t>(st.st_size);
}

VlenCheck::~VlenCheck() {
    if (impl_->own_fd && impl_->fd >= 0) ::close(impl_->fd);
}

std::string VlenCheck::check(std::uint64_t row) {
    Impl& d = *impl_;
    if (d.members.empty() || row >= d.rows) return {};
    std::string why;
    if (!d.read_chunk(row, why)) return why;
    return d.check_bytes(&d.buf[row % d.chunk_rows * d.row_size]);
}

std::vector<std::pair<std::uint64_t, std::string>> VlenCheck::damaged_rows() {
    Impl& d = *impl_;
    std::vector<std::pair<std::uint64_t, std::string>> out;
    if (d.members.empty()) return out;
    for (hsize_t first = 0; first < d.rows; first += d.chunk_rows) {
        std::string why;
        bool read = d.read_chunk(first, why);
        for (hsize_t row = first; row < std::min(d.rows, first + d.chunk_rows); ++row) {
            std::string bad = read ? d.check_bytes(&d.buf[(row - first) * d.row_size]) : why;
            if (!bad.empty()) out.emplace_back(row, std::move(bad));
        }
    }
    return out;
}

} // namespace dynexec
