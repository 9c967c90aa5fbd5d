// The results archive: one HDF5 file per session, `<dir>/<session>.h5`, each
// result a group `/jobs/<job_id>` in plain HDF5 that h5py, h5dump and HDFView
// read without dynexec:
//   attributes  status, error_type, message, traceback, owner, service, server,
//               value_kind (variable-length UTF-8 strings); submit_time,
//               start_time, end_time (float64, Unix seconds); attempts (int32)
//   dataset     "value", by value_kind: "bool" scalar enum-bool, "int" scalar
//               int64, "float" scalar float64, "str" scalar variable-length
//               UTF-8, "bytes"/"pickle" 1-D uint8, "array" the array's own
//               dtype and shape (b1 as enum-bool); "none" has no dataset.
#pragma once

#include "common/errors.hpp"
#include "common/job.hpp"

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dynexec {

// A batch was written except for the results named in `failed` (already
// archived, or a write that failed); what() says why for each.
struct ArchiveWriteError : ArchiveError {
    ArchiveWriteError(const std::string& what, std::vector<JobId> failed)
        : ArchiveError(what), failed(std::move(failed)) {}
    std::vector<JobId> failed;
};

// Thread-safe: one mutex per archive (HDF5 serialises all calls anyway).
class ResultsArchive {
public:
    // Creates `dir` and `<dir>/<session>.h5`, or reopens that file read-write
    // so that a session can be resumed. Throws ArchiveError naming the path and the reason.
    ResultsArchive(std::filesystem::path dir, std::string session);
    ~ResultsArchive(); // closes, ignoring errors: call close() to see them
    ResultsArchive(const ResultsArchive&) = delete;
    ResultsArchive& operator=(const ResultsArchive&) = delete;

    // Writes every result it can, then throws ArchiveWriteError naming the rest;
    // a result whose job ID is already in the file is never overwritten.
    void write(const std::vector<Result>& batch);
    // Hands everything written to the OS: it survives a crash of this process
    // and is visible to readers that open the file afterwards (no fsync).
    void flush();
    // Flushes and closes the file; idempotent. Later calls throw ArchiveError.
    void close();

    std::optional<Result> read(const JobId& id) const; // nullopt if not archived
    bool contains(const JobId& id) const;
    std::size_t count() const;

    // "<absolute dir>/<session>.h5:/jobs/<job_id>"
    std::string location_of(const JobId& id) const;
    const std::filesystem::path& dir() const;  // absolute
    const std::filesystem::path& file() const; // absolute
    const std::string& session() const;

    // The archive file of `session` in `dir`.
    static std::filesystem::path file_of(const std::filesystem::path& dir, const std::string& session);
    // Reads one result from `<dir>/<session of id>.h5`, opened read-only for
    // the call: nullopt if the file or the job is not there; ArchiveError if
    // the file cannot be read; InvalidJob if `id` is not a job ID.
    static std::optional<Result> read_from(const std::filesystem::path& dir, const JobId& id);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace dynexec
