#include "archive/results_finder.hpp"

#include "archive/results_archive.hpp"
#include "archive/results_manager.hpp"

#include <system_error>

namespace dynexec {

std::optional<Result> ResultsFinder::find(const std::filesystem::path& dir, const JobId& id) {
    std::string session = JobIdGenerator::session_of(id); // throws InvalidJob
    if (auto live = ResultsManager::live(session); live && live->dir()) {
        std::error_code ec; // a missing `dir` is simply not the live one
        if (std::filesystem::equivalent(*live->dir(), dir, ec)) return live->find(id);
    }
    return ResultsArchive::read_from(dir, id);
}

} // namespace dynexec
