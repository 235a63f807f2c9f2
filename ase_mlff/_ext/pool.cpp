// The worker pool behind mlff::parallel_for (see pool.hpp).
//
// Workers are started the first time a region needs them and then sleep on a condition
// variable between regions, so an MD step pays a wake-up (microseconds), not a thread start.
// A region hands the workers a task counter; every thread, the caller included, claims tasks
// until none are left, and the caller waits for the workers to finish. The pool object is
// never destroyed (process exit must not join or std::terminate sleeping workers); after
// fork() the child, which has none of the parent's workers, forgets it and starts its own.
#include "pool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if !defined(_WIN32)
#include <pthread.h>
#endif

namespace mlff {
namespace {

int available_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int c = CPU_COUNT(&set);
        if (c > 0) return c;
    }
#endif
    const unsigned hc = std::thread::hardware_concurrency();
    return hc == 0 ? 1 : static_cast<int>(std::min(hc, static_cast<unsigned>(kMaxThreads)));
}

std::atomic<int> g_configured{0};       // 0: never set
std::atomic<int64_t> g_created{0};      // workers started in this process
thread_local bool tl_in_region = false; // this thread runs tasks of a region (caller or worker)
thread_local int tl_last_used = 1;

class Pool {
public:
    std::mutex region;  // held by the caller of the region being run, and while resizing

    int size() {
        std::lock_guard<std::mutex> lk(m_);
        return static_cast<int>(workers_.size());
    }

    // Start workers until there are n (region held). Where the system refuses a thread, the
    // pool keeps the workers it has: callers use min(wanted, size()).
    void grow(int n) {
        std::unique_lock<std::mutex> lk(m_);
        if (n <= static_cast<int>(workers_.size())) return;
        keep_ = n;
        const uint64_t gen = generation_;
        lk.unlock();
        for (int w = static_cast<int>(workers_.size()); w < n; ++w) {
            try {
                std::thread th(&Pool::worker_loop, this, w, gen);
                lk.lock();
                workers_.push_back(std::move(th));
                lk.unlock();
            } catch (const std::system_error&) {
                lk.lock();
                keep_ = static_cast<int>(workers_.size());
                return;
            }
            g_created.fetch_add(1);
        }
    }

    // Stop workers until at most n remain (region held, so none is inside a region).
    void shrink(int n) {
        std::vector<std::thread> leaving;
        {
            std::lock_guard<std::mutex> lk(m_);
            if (n >= static_cast<int>(workers_.size())) return;
            keep_ = n;
            for (size_t w = n; w < workers_.size(); ++w) leaving.push_back(std::move(workers_[w]));
            workers_.resize(n);
        }
        wake_.notify_all();
        for (auto& th : leaving) th.join();
    }

    // One region on the caller and `workers` workers (region held, workers <= size()).
    void run(int64_t n_tasks, int workers, const std::function<void(int64_t)>& fn) {
        {
            std::lock_guard<std::mutex> lk(m_);
            fn_ = &fn;
            n_tasks_ = n_tasks;
            next_.store(0);
            error_ = nullptr;
            active_ = workers;
            running_ = workers;
            ++generation_;
        }
        wake_.notify_all();
        work();
        std::unique_lock<std::mutex> lk(m_);
        done_.wait(lk, [&] { return running_ == 0; });
        fn_ = nullptr;
        std::exception_ptr error = error_;
        error_ = nullptr;
        lk.unlock();
        if (error) std::rethrow_exception(error);
    }

private:
    void work() {
        for (;;) {
            const int64_t t = next_.fetch_add(1);
            if (t >= n_tasks_) return;
            try {
                (*fn_)(t);
            } catch (...) {
                std::lock_guard<std::mutex> lk(m_);
                if (!error_) error_ = std::current_exception();
                next_.store(n_tasks_);  // skip the tasks not yet claimed
            }
        }
    }

    // gen: the generation when this worker was started; it joins only regions begun later.
    void worker_loop(int w, uint64_t gen) {
        tl_in_region = true;  // a task that calls parallel_for runs it inline
        uint64_t seen = gen;
        std::unique_lock<std::mutex> lk(m_);
        for (;;) {
            wake_.wait(lk, [&] { return w >= keep_ || generation_ != seen; });
            if (w >= keep_) return;
            seen = generation_;
            if (w >= active_) continue;
            lk.unlock();
            work();
            lk.lock();
            if (--running_ == 0) done_.notify_one();
        }
    }

    std::mutex m_;  // guards everything below except next_
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    uint64_t generation_ = 0;  // regions begun
    int keep_ = 0;             // workers with an index >= keep_ exit
    int active_ = 0;           // workers [0, active_) take part in the current region
    int running_ = 0;          // of those, the ones not finished yet
    const std::function<void(int64_t)>* fn_ = nullptr;
    int64_t n_tasks_ = 0;
    std::atomic<int64_t> next_{0};  // next unclaimed task
    std::exception_ptr error_;
};

std::mutex g_pool_mutex;  // guards g_pool
Pool* g_pool = nullptr;   // created on first use, never destroyed

#if !defined(_WIN32)
void before_fork() { g_pool_mutex.lock(); }
void after_fork_in_parent() { g_pool_mutex.unlock(); }
void after_fork_in_child() {
    g_pool = nullptr;  // its workers do not exist here (and its mutexes may be held): leak it
    g_created.store(0);
    g_pool_mutex.unlock();
}
#endif

Pool& pool() {
    std::lock_guard<std::mutex> lk(g_pool_mutex);
    if (g_pool == nullptr) {
#if !defined(_WIN32)
        static const bool registered = (pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child), true);
        (void)registered;
#endif
        g_pool = new Pool();
    }
    return *g_pool;
}

Pool* existing_pool() {
    std::lock_guard<std::mutex> lk(g_pool_mutex);
    return g_pool;
}

struct InRegion {
    bool before = tl_in_region;
    InRegion() { tl_in_region = true; }
    ~InRegion() { tl_in_region = before; }
};

}  // namespace

int num_threads() {
    const int n = g_configured.load();
    return n > 0 ? n : available_cpus();
}

void set_num_threads(int n) {
    if (n < 1 || n > kMaxThreads)
        throw std::invalid_argument("number of threads must be in [1, " + std::to_string(kMaxThreads) + "], got " +
                                    std::to_string(n));
    g_configured.store(n);
    if (Pool* p = existing_pool()) {
        std::lock_guard<std::mutex> region(p->region);
        p->shrink(n - 1);
    }
}

int resolve_threads(int requested) {
    if (requested < 0) throw std::invalid_argument("n_threads must be >= 0 (0: the configured count)");
    return requested == 0 ? num_threads() : std::min(requested, kMaxThreads);
}

void parallel_for(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& fn) {
    const int want = static_cast<int>(std::min<int64_t>(std::min(std::max(n_threads, 1), kMaxThreads),
                                                        std::max<int64_t>(n_tasks, 1)));
    if (want > 1 && !tl_in_region) {
        Pool& p = pool();
        std::unique_lock<std::mutex> region(p.region, std::try_to_lock);
        if (region.owns_lock()) {
            p.grow(want - 1);
            const int workers = std::min(want - 1, p.size());
            if (workers > 0) {
                InRegion guard;
                p.run(n_tasks, workers, fn);
                tl_last_used = workers + 1;
                return;
            }
        }
    }
    {
        InRegion guard;
        for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    }
    tl_last_used = 1;
}

int last_threads_used() { return tl_last_used; }

int64_t workers_created() { return g_created.load(); }

int pool_size() {
    Pool* p = existing_pool();
    return p == nullptr ? 0 : p->size();
}

}  // namespace mlff
