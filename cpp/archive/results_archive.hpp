// The results archive: one HDF5 file per session, `<dir>/<session>.h5`, in
// plain HDF5 that h5py, h5dump, HDFView and pandas (through h5py) read
// without dynexec (dynexec.read_archive is such a reader, h5py and numpy only).
//   root attributes  format = "dynexec results archive", version = 5 (int32),
//                    session; start_time, end_time (ISO 8601 UTC text; end_time
//                    "" while the session runs), user, host, pid, and what the
//                    Executor adds (script, label, dynexec_version, ...)
//   /results  1-D compound table, one row per archived job in the order they
//             were written (no empty rows), chunked, extended as rows come.
//             Texts are variable-length UTF-8 strings ("" when empty), but for
//             the short ones: job_id, status and value_kind NUL-terminated ASCII,
//             summary NUL-terminated UTF-8 of at most 95 bytes:
//     job_id, status ("ok", "error", "cancelled", "lost", "killed", "timeout"),
//     value_kind ("none", "bool", "int", "float", "str", "bytes", "pickle",
//                 "array", "json"),
//     value        str: the text; json: the JSON text; array and any value
//                  kept as a dataset of its own: that dataset's path
//     int_value    int64: a bool or int value; float_value float64: a float
//     value_bytes  variable-length uint8: a bytes or pickle value up to 64 KiB
//     service, function (a Python job's callable), summary (the call, short and
//     printable), args (JSON text), label, tags (a JSON array), owner, server,
//     submit_time, start_time, end_time  float64 seconds since the Unix epoch
//                  (the dataset's attribute time_unit says so), attempts int32,
//     error_type, message, traceback, stdout, stderr
//   /index    1-D uint64 by sequence number - 1: the job's row in /results + 1;
//             0 (the fill value) for a job not archived. Only an index: a
//             reader may as well search the job_id column.
//   /values/<job_id>  an array value (any size: its own dtype and shape, b1 as
//             h5py's enum bool), a str over 64 KiB (a scalar UTF-8 string), or
//             bytes/pickle over 64 KiB (1-D uint8)
//   /texts, /bytes  1-D variable-length UTF-8 / uint8: where the rows' texts
//             and bytes values are stored, each once, the rows referring to
//             the same heap objects (a text of a column that repeats - owner,
//             service, function, label, tags, server, error_type - once per
//             session while it is cached). Storage only: read /results.
// A job is written once: an archived job is never overwritten, and no row may
// be written over with libhdf5 (it would free heap objects other rows share).
// Rows reach the file as whole chunks (row_image.hpp), not through libhdf5's
// type conversion, which would make a heap object of every text of every row.
// Write order: a batch's /values datasets, its /results rows, then its /index
// entries, and one flush before write() returns: once it returns, the batch
// is in the file for every reader, also after a kill of this process. A
// failed write or flush takes the batch back (rows cut off, entries zeroed).
// A reader checks that the row an index entry names holds that job, and that
// each string reference of the row holds against the file (vlen_check.hpp).
// Version 5 is written; version 4 (a variable-length summary) is read too;
// other files get a clear message here (dynexec.read_archive still reads
// versions 2 and 3).
#pragma once

#include "common/errors.hpp"
#include "common/job.hpp"

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
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

// Who may read the files and directories the archive creates: their owner
// only (0600 / 0700), or also the owner's group (0640 / 0750).
enum class ArchiveAccess { owner, group };

// Thread-safe: one mutex per archive (HDF5 serialises all calls anyway).
class ResultsArchive {
public:
    // Creates `dir` and `<dir>/<session>.h5`, or reopens that file read-write
    // so that a session can be resumed. Throws ArchiveError naming the path and
    // the reason (also for a `session` that is not a JobIdGenerator session).
    ResultsArchive(std::filesystem::path dir, std::string session, ArchiveAccess access = ArchiveAccess::owner);
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
    // Sets root attributes of the file (text), replacing those of the same name; flushed.
    void set_info(const std::vector<std::pair<std::string, std::string>>& info);
    // Flushes, records end_time and closes the file; idempotent. Later calls throw ArchiveError.
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
    // The rows of /results in `file` whose string references are damaged (reading them could crash
    // libhdf5), with why, in row order: what a reader of the file with h5py must skip. ArchiveError if
    // the file cannot be checked.
    static std::vector<std::pair<std::uint64_t, std::string>> damaged_rows(const std::filesystem::path& file);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace dynexec
