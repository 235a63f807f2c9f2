// Threads of the compiled kernels: one configured count and one persistent worker pool.
//
// Every multithreaded kernel takes an `n_threads` argument: > 0 is used as given, 0 means the
// configured count (`set_num_threads`; Python's ase_mlff.set_num_threads forwards here, and
// sets the default from ASE_MLFF_NUM_THREADS / OMP_NUM_THREADS / torch when ase_mlff is
// imported). The kernels split their work into tasks whose number depends only on that
// count, never on which thread runs which task, so results are deterministic for a given
// count however the OS schedules the workers.
#pragma once

#include <cstdint>
#include <functional>

namespace mlff {

// Upper bound of any thread count (a guard against typos, far beyond any useful count).
constexpr int kMaxThreads = 1024;

// The configured count: set by set_num_threads; before that, the CPUs in this process's
// affinity mask (std::thread::hardware_concurrency where there is none), at least 1.
int num_threads();
// n in [1, kMaxThreads], else std::invalid_argument. Lowering the count stops the surplus
// workers; raising it starts nothing until a kernel needs the extra workers.
void set_num_threads(int n);
// requested > 0: requested (capped at kMaxThreads); 0: num_threads(); < 0: invalid_argument.
int resolve_threads(int requested);

// Runs fn(task) for every task in [0, n_tasks) on min(n_threads, n_tasks) threads: the
// calling thread and pool workers, which claim tasks in turn. Returns when all tasks are
// done; the first exception a task threw is rethrown here (tasks not yet started are
// skipped). Runs everything on the calling thread when n_threads or n_tasks is 1, when
// called from inside a task (no nesting) or while another thread runs a parallel region
// (the pool serves one region at a time). Call it without holding the GIL if fn may run
// long; fn must not take the GIL.
void parallel_for(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& fn);

// Threads (caller included) the last parallel_for called from this thread ran on.
int last_threads_used();
// Worker threads started in this process since the pool was first used (proves reuse).
int64_t workers_created();
// Worker threads alive now.
int pool_size();

}  // namespace mlff
