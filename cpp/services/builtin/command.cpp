// The `command` service: runs a program (argv, environment, working directory) as a job. Its stdout and
// stderr become the job's captured output; exit 0 is a success (value 0), anything else a CommandError.
// The child runs in a process group of its own, so that kill() and time limits end it with all it started.
#include "services/builtin/builtin.hpp"
#include "server/output_capture.hpp"

#include <cerrno>
#include <chrono>
#include <fcntl.h>
#include <csignal>
#include <cstring>
#include <poll.h>
#include <spawn.h>
#include <optional>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace dynexec::builtin {
namespace {

constexpr int kPollMs = 50;      // how often a running command checks stop_requested()
constexpr int kTermGraceMs = 500; // SIGTERM, then SIGKILL to the group after this long

// "a\0b\0" -> {"a", "b"}: NUL cannot occur inside an argument or an environment entry.
std::vector<std::string> split_nul(const std::string& s) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start < s.size()) {
        auto end = s.find('\0', start);
        if (end == std::string::npos) end = s.size();
        out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

std::string quoted(const std::vector<std::string>& argv) {
    std::string s;
    for (auto& a : argv) {
        if (!s.empty()) s += ' ';
        bool plain = !a.empty() && a.find_first_of(" \t\n'\"\\$") == std::string::npos;
        s += plain ? a : "'" + a + "'";
    }
    return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

// The server's environment with `overrides` ("K=V") replacing or adding entries.
std::vector<std::string> merged_environment(const std::vector<std::string>& overrides) {
    std::vector<std::string> env;
    auto key = [](const std::string& kv) { return kv.substr(0, kv.find('=')); };
    for (char** e = environ; *e; ++e) {
        std::string kv(*e), k = key(kv);
        bool replaced = false;
        for (auto& o : overrides) replaced = replaced || key(o) == k;
        if (!replaced) env.push_back(std::move(kv));
    }
    for (auto& o : overrides) env.push_back(o);
    return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
    std::vector<char*> p;
    for (auto& s : strings) p.push_back(s.data());
    p.push_back(nullptr);
    return p;
}

// Where the child's output goes: the job's capture, else this process's own fd 1/2.
void forward(int stream, const char* data, std::size_t n) {
    if (auto* out = JobOutput::current()) return out->write(stream, std::string_view(data, n));
    while (n > 0) {
        auto w = ::write(stream, data, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        data += w;
        n -= static_cast<std::size_t>(w);
    }
}

struct Fd {
    int fd = -1;
    ~Fd() { close(); }
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};

Value run_command(const Params& p) {
    auto argv = split_nul(p.get<Bytes>("argv").data);
    if (argv.empty() || argv[0].empty()) throw std::invalid_argument("argv must name a program");
    auto env = merged_environment(split_nul(p.get<Bytes>("env").data));
    const auto& cwd = p.get<std::string>("cwd");
    const auto what = quoted(argv);

    int pipes[2][2];
    if (::pipe2(pipes[0], O_CLOEXEC) != 0) throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
    if (::pipe2(pipes[1], O_CLOEXEC) != 0) {
        ::close(pipes[0][0]);
        ::close(pipes[0][1]);
        throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
    }
    Fd out_r{pipes[0][0]}, out_w{pipes[0][1]}, err_r{pipes[1][0]}, err_w{pipes[1][1]};

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out_w.fd, 1);
    posix_spawn_file_actions_adddup2(&actions, err_w.fd, 2);
    if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);   // a server thread may block signals: the command must not
    posix_spawnattr_setsigdefault(&attr, &all); // nor inherit the server's ignored ones
    posix_spawnattr_setpgroup(&attr, 0);        // a group of its own: kill() ends all it started
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    auto args = pointers(argv);
    auto envp = pointers(env);
    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, argv[0].c_str(), &actions, &attr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    out_w.close();
    err_w.close();
    if (rc != 0)
        throw ServiceError("CommandError", fmt::format("cannot run {}{}: {}", what,
                                                       cwd.empty() ? "" : fmt::format(" in {}", cwd),
                                                       std::strerror(rc)),
                           {}, std::int64_t{127});

    // Drain both pipes until the child closes them (it and everything it started), watching for a stop.
    char buf[65536];
    using clock = std::chrono::steady_clock;
    std::optional<clock::time_point> stopping; // when SIGTERM went to the group
    auto since = [&] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - *stopping).count();
    };
    pollfd fds[2] = {{out_r.fd, POLLIN, 0}, {err_r.fd, POLLIN, 0}};
    while (fds[0].fd >= 0 || fds[1].fd >= 0) {
        if (p.stop_requested()) {
            if (!stopping) {
                ::kill(-pid, SIGTERM);
                stopping = clock::now();
            } else if (since() >= kTermGraceMs) {
                ::kill(-pid, SIGKILL);
            }
        }
        int n = ::poll(fds, 2, kPollMs);
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            auto r = ::read(fds[i].fd, buf, sizeof buf);
            if (r > 0) forward(i + 1, buf, static_cast<std::size_t>(r));
            else if (r == 0 || errno != EINTR) fds[i].fd = -1; // closed: the Fd closes it at the end
        }
        // A process that left the group holds the pipes open: stop reading within the server's stop grace (2 s).
        if (stopping && since() >= kTermGraceMs + 1000) break;
    }
    int status = 0;
    pid_t waited;
    while ((waited = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    if (waited < 0) // SIGCHLD ignored in this process: the child was reaped without us
        throw ServiceError("CommandError", fmt::format("command {}: its exit status is unknown ({})", what,
                                                       std::strerror(errno)));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return std::int64_t{0};
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char* name = sigabbrev_np(sig);
        throw ServiceError("CommandError",
                           fmt::format("command {} was ended by signal {} (SIG{})", what, sig, name ? name : "?"), {},
                           std::int64_t{-sig});
    }
    int code = WEXITSTATUS(status);
    throw ServiceError("CommandError", fmt::format("command {} exited with code {}", what, code), {},
                       std::int64_t{code});
}

} // namespace

void add_command_services(ServiceRegistrar& r) {
    r.add({"command",
           "Run a program: `argv` (its arguments, each ending in a NUL byte; the first is looked up on PATH), `env` "
           "(KEY=VALUE entries, each ending in a NUL byte, over the server's environment) and `cwd` (its working "
           "directory; \"\": the server's). Its stdout and stderr are the job's output. Exit 0: value 0; "
           "another exit or a signal: a CommandError whose value is the exit code (-N for signal N). Killed, "
           "or past its time limit, its whole process group gets SIGTERM, then SIGKILL. From Python: "
           "Executor.submit_command(argv, env=, cwd=).",
           {{"argv", ValueType::bytes, std::nullopt, "the program and its arguments, NUL-terminated"},
            {"env", ValueType::bytes, Value(Bytes{}), "KEY=VALUE entries, NUL-terminated"},
            {"cwd", ValueType::string, Value(std::string{}), "working directory (\"\": the server's)"}},
           run_command});
}

} // namespace dynexec::builtin
