// The results finder: finds a result by its job ID, from the live results
// manager of its session in this process if there is one (so that nothing
// still queued is missed), else from the session's archive file.
#pragma once

#include "common/job.hpp"

#include <filesystem>
#include <optional>

namespace dynexec {

// Thread-safe (stateless).
class ResultsFinder {
public:
    // nullopt if the job is not archived in `dir`; InvalidJob for a malformed
    // ID; ArchiveError if the archive file cannot be read.
    static std::optional<Result> find(const std::filesystem::path& dir, const JobId& id);
};

} // namespace dynexec
