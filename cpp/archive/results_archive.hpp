// The results archive: one HDF5 file per session, `<dir>/<session>.h5`, in
// plain HDF5 that h5py, h5dump and HDFView read without dynexec
// (dynexec.read_archive is such a reader, h5py and numpy only). Job
// "<session>-<seq>" (seq from 1) is row seq-1 of /results.
//   root attributes  format = "dynexec results archive", version = 3 (int32),
//                    session (the session whose jobs the file holds)
//   /results  1-D compound dataset, chunked (256 rows), extended as rows come;
//             rows no result was written to are all zeros (status "absent"):
//     status       enum uint8 {absent=0, ok, error, cancelled, lost, killed, timeout}
//     value_kind   enum uint8 {none=0, bool, int, float, str, bytes, pickle, array}
//     external     uint8: 1 if the value is the dataset /values/<job_id>
//     ndim         uint8, dtype char[8] (numpy's "f8", "i4", "b1", ...), shape
//                  uint64[8] (the first ndim used): an array value's
//     attempts     int32; submit_time, start_time, end_time float64 (Unix s)
//     int_value    int64: a bool or int value; float_value float64: a float
//     value, owner, service, server, error_type, message, traceback, stdout,
//     stderr       uint64[2] = (offset, size) of the bytes in /heap; (0, 0) is
//                  empty. Texts are UTF-8; a value is a str's UTF-8, the bytes,
//                  the pickle, or an array's elements (C order, native =
//                  little-endian). Repeated owner/service/server/error_type
//                  texts share their bytes. stdout and stderr are what the job
//                  printed (new in version 3; version 2 has neither).
//   /heap     1-D uint8, chunked, extended by each batch's bytes
//   /values/<job_id>  a value over 64 KiB (or an array of over 8 dimensions):
//             contiguous, the array's own dtype and shape (b1 as h5py's enum
//             bool), or 1-D uint8 for str, bytes and pickle
// A row is written once: a job already archived is never overwritten.
// Write order: a batch's /heap bytes and /values datasets are written and
// flushed before its rows, and its rows are flushed before write() returns.
// So a row that reads as a result (any status but absent) always points to
// bytes that are in the file, also after a crash or a full disk; rows of a
// batch whose flush failed are written back to zeros (absent).
// Versions 2 and 3 are read; only version 3 files are written to.
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
    struct Failure {
        JobId job_id;
        std::string reason;     // short: "No space left on device (errno 28)", "job ... is already archived"
        bool duplicate = false; // the job was already archived (by an earlier result of it)
    };
    ArchiveWriteError(const std::string& what, std::vector<Failure> failures, int os_errno)
        : ArchiveError(what), failures(std::move(failures)), os_errno(os_errno) {
        for (const auto& f : this->failures) failed.push_back(f.job_id);
    }
    std::vector<Failure> failures; // in batch order
    std::vector<JobId> failed;     // their job IDs
    int os_errno;                  // of the first failed system call; 0 if none
};

// Thread-safe: one mutex per archive (HDF5 serialises all calls anyway).
class ResultsArchive {
public:
    // Creates `dir` and `<dir>/<session>.h5`, or reopens that file read-write
    // so that a session can be resumed. Throws ArchiveError naming the path and
    // the reason (also for a `session` that is not a JobIdGenerator session).
    ResultsArchive(std::filesystem::path dir, std::string session);
    ~ResultsArchive(); // closes, ignoring errors: call close() to see them
    ResultsArchive(const ResultsArchive&) = delete;
    ResultsArchive& operator=(const ResultsArchive&) = delete;

    // Writes and flushes every result it can, then throws ArchiveWriteError
    // naming the rest: a job already in the file (never overwritten), an ID of
    // another session or not a job ID, a value that cannot be stored, a failed
    // write or flush (then the whole batch: its rows are left absent). Once it
    // returns, the results not named are in the file for every reader.
    void write(const std::vector<Result>& batch);
    // Hands everything written to the OS: it survives a crash of this process
    // and is visible to readers that open the file afterwards (no fsync).
    void flush();
    // Flushes and closes the file; idempotent. Later calls throw ArchiveError.
    void close();

    std::optional<Result> read(const JobId& id) const; // nullopt if not archived
    bool contains(const JobId& id) const;
    std::size_t count() const;

    // "<absolute dir>/<session>.h5:/results[<row>]"; InvalidJob if `id` is not
    // a job ID of this session (as for read() and contains()).
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
