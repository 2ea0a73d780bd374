// fastcert's own thread pool: the kernels' parallel loops run on it, not on OpenMP.
//
// Why not OpenMP: torch loads GNU OpenMP and the core would share its pool, whose idle workers spin
// (GOMP_SPINCOUNT, ~ms) unless the user exports OMP_WAIT_POLICY=PASSIVE before torch starts. On a
// busy machine a spinning team member that the scheduler preempts stalls every barrier by a scheduler
// tick: fastcert CROWN was 1.3-4x slower in a default environment than with PASSIVE (BENCHMARKS.md).
// This pool never spins for long: an idle worker sleeps on a condition variable, and the caller never
// waits for a worker that has not started, because the work is handed out in chunks from an atomic
// counter (the caller takes chunks too, so a worker that wakes late finds nothing left and sleeps again).
// The caller waits only for chunks a worker has claimed.
//
// Each job carries the caller's floating-point environment and workers adopt it before running a chunk
// (rounding mode and flush-to-zero / denormals-are-zero are per thread): the rounding analysis needs the
// workers to compute exactly as the (checked) calling thread does.
#pragma once
#include <cstdint>

namespace fastcert {

// Threads a parallel loop uses now, caller included: the calling thread's set_pool_threads() value, else
// omp_get_max_threads() (so OMP_NUM_THREADS and torch.set_num_threads() are honoured), at least 1.
int pool_threads();

// Fix pool_threads() on the calling thread to n (0: back to omp_get_max_threads()); returns the previous
// setting. fastcert._ext.torch_serial() uses it while torch's own operations run on one thread.
int set_pool_threads(int n);

// Open (begin = true) or close a burst: a run of parallel loops separated by short serial steps, such
// as one bound computation. While any burst is open, idle workers keep polling for the next job up to
// ~2 ms after their last one instead of ~10 us before they sleep (pool.cpp, kBurstSpin). Calls nest and
// add up over threads; every open must be closed (fastcert._ext.torch_serial() brackets a computation).
void pool_burst(bool begin);

using ChunkFn = void (*)(void* ctx, std::int64_t begin, std::int64_t end, int tid);

// Runs fn(ctx, b, e, tid) over [0, n) in chunks [b, e) of at most `grain` items, on the caller (tid 0)
// and the pool's workers (tid 1 .. pool_threads()-1); returns when every chunk is done. Serial on the
// caller (one chunk call per grain, tid 0) when `parallel` is false, when n <= grain, when the pool has
// one thread, when called from a pool worker, or while another thread is using the pool.
void parallel_chunks(std::int64_t n, std::int64_t grain, bool parallel, ChunkFn fn, void* ctx);

// Typed front end: f(begin, end, tid).
template <typename F>
inline void parallel_for(std::int64_t n, std::int64_t grain, bool parallel, F&& f) {
  struct Tramp {
    static void call(void* c, std::int64_t b, std::int64_t e, int tid) { (*static_cast<F*>(c))(b, e, tid); }
  };
  parallel_chunks(n, grain, parallel, &Tramp::call, static_cast<void*>(&f));
}

// A grain that gives each thread a few chunks of [0, n) (dynamic balance on a busy machine).
inline std::int64_t grain_for(std::int64_t n, std::int64_t min_grain = 1) {
  const std::int64_t t = pool_threads();
  std::int64_t g = (n + 4 * t - 1) / (4 * t);
  return g < min_grain ? min_grain : (g < 1 ? 1 : g);
}

}  // namespace fastcert
