// Clang's thread-safety analysis (-Wthread-safety): which mutex guards which
// member, which functions need it held. The macros expand to nothing under
// other compilers. std::mutex carries no annotations, so annotated code locks
// the Mutex and MutexLock below, which are std::mutex and std::lock_guard.
#pragma once

#include <mutex>

#if defined(__clang__)
#define DYNEXEC_TSA(x) __attribute__((x))
#else
#define DYNEXEC_TSA(x)
#endif

#define CAPABILITY(x) DYNEXEC_TSA(capability(x))
#define SCOPED_CAPABILITY DYNEXEC_TSA(scoped_lockable)
#define GUARDED_BY(x) DYNEXEC_TSA(guarded_by(x))
#define PT_GUARDED_BY(x) DYNEXEC_TSA(pt_guarded_by(x))
#define REQUIRES(...) DYNEXEC_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) DYNEXEC_TSA(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) DYNEXEC_TSA(acquire_capability(__VA_ARGS__))
#define RELEASE(...) DYNEXEC_TSA(release_capability(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS DYNEXEC_TSA(no_thread_safety_analysis)

namespace dynexec {

class CAPABILITY("mutex") Mutex {
public:
    void lock() ACQUIRE() { m_.lock(); }
    void unlock() RELEASE() { m_.unlock(); }

private:
    std::mutex m_;
};

class SCOPED_CAPABILITY MutexLock {
public:
    explicit MutexLock(Mutex& m) ACQUIRE(m) : m_(m) { m_.lock(); }
    ~MutexLock() RELEASE() { m_.unlock(); }
    MutexLock(const MutexLock&) = delete;
    MutexLock& operator=(const MutexLock&) = delete;

private:
    Mutex& m_;
};

} // namespace dynexec
