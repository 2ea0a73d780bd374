// fastcert's thread pool (see pool.h for why it exists and how it waits).
#include "fastcert/pool.h"

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cfenv>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTCERT_RELAX() _mm_pause()
#else
#define FASTCERT_RELAX() std::this_thread::yield()
#endif

namespace fastcert {
namespace {

// How long an idle thread polls before it sleeps: long enough to catch the next loop of a kernel
// sequence, short enough that a busy machine loses nothing measurable (OpenMP's default is ~ms).
constexpr auto kSpin = std::chrono::microseconds(10);
// ... and while a burst is open (pool_burst): a bound computation's kernels are separated by Python
// steps of ~10-300 us, and a worker asleep on the condition variable took ~50 us or more to wake (a
// futex wake-up on a virtual machine), by when the caller had done most of the chunks itself: with two
// threads the IBP bench cases ran no faster than on one. Polling through the gaps of the computation,
// and never beyond this long after the last job, keeps the workers on hand (BENCHMARKS.md).
constexpr auto kBurstSpin = std::chrono::microseconds(2000);

std::atomic<int> g_burst{0};  // open bursts, all threads

// Poll pred for kSpin (burst_aware: also as long as a burst is open, up to kBurstSpin).
template <typename Pred>
bool spin_until(Pred pred, bool burst_aware = false) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    if (pred()) return true;
    FASTCERT_RELAX();
    if ((i & 63) == 63) {
      const auto dt = std::chrono::steady_clock::now() - t0;
      if (dt >= kSpin && !(burst_aware && dt < kBurstSpin && g_burst.load(std::memory_order_relaxed) > 0))
        return pred();
    }
  }
}

struct Job {
  ChunkFn fn = nullptr;
  void* ctx = nullptr;
  std::int64_t n = 0, grain = 1;
  int nthreads = 1;
  std::fenv_t env{};
  std::atomic<std::int64_t> next{0}, done{0};
  std::mutex m;               // the caller sleeps on cv until done == n
  std::condition_variable cv;
};

thread_local bool t_in_worker = false;

void run_chunks(Job& job, int tid) {
  for (;;) {
    const std::int64_t b = job.next.fetch_add(job.grain, std::memory_order_relaxed);
    if (b >= job.n) return;
    const std::int64_t e = b + job.grain < job.n ? b + job.grain : job.n;
    job.fn(job.ctx, b, e, tid);
    if (job.done.fetch_add(e - b, std::memory_order_acq_rel) + (e - b) == job.n) {
      std::lock_guard<std::mutex> lk(job.m);
      job.cv.notify_one();
    }
  }
}

class Pool {
 public:
  // One pool per process (a forked child builds its own: the parent's workers do not exist there).
  // Never destroyed: its detached workers sleep until the process exits.
  static Pool& get() {
    static std::atomic<Pool*> inst{nullptr};
    Pool* p = inst.load(std::memory_order_acquire);
    if (p == nullptr || p->pid_ != getpid()) {
      static std::mutex create;
      std::lock_guard<std::mutex> lk(create);
      p = inst.load(std::memory_order_acquire);
      if (p == nullptr || p->pid_ != getpid()) {
        p = new Pool();
        inst.store(p, std::memory_order_release);
      }
    }
    return *p;
  }

  std::mutex dispatch;  // one job at a time; another caller meanwhile runs serially

  // Called with `dispatch` held.
  void ensure_workers(int k) {
    while (workers_ < k) {
      const int tid = ++workers_;
      std::thread([this, tid] { loop(tid); }).detach();
    }
  }

  void post(const std::shared_ptr<Job>& job) {
    {
      std::lock_guard<std::mutex> lk(m_);
      cur_ = job;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
  }

  void retire() {
    std::lock_guard<std::mutex> lk(m_);
    cur_.reset();
  }

 private:
  Pool() : pid_(getpid()) {}

  void loop(int tid) {
    t_in_worker = true;
    std::uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      spin_until([&] { return gen_.load(std::memory_order_acquire) != seen; }, true);
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_relaxed) != seen; });
        seen = gen_.load(std::memory_order_relaxed);
        job = cur_;
      }
      if (job && tid < job->nthreads) {
        std::fesetenv(&job->env);  // compute in the caller's floating-point environment
        run_chunks(*job, tid);
      }
    }
  }

  const pid_t pid_;
  int workers_ = 0;
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<std::uint64_t> gen_{0};
  std::shared_ptr<Job> cur_;
};

void serial(std::int64_t n, std::int64_t grain, ChunkFn fn, void* ctx) {
  for (std::int64_t b = 0; b < n; b += grain) fn(ctx, b, b + grain < n ? b + grain : n, 0);
}

}  // namespace

namespace {
thread_local int t_override = 0;
}

void pool_burst(bool begin) {
  if (begin) g_burst.fetch_add(1, std::memory_order_relaxed);
  else g_burst.fetch_sub(1, std::memory_order_relaxed);
}

int set_pool_threads(int n) {
  const int prev = t_override;
  t_override = n < 0 ? 0 : n;
  return prev;
}

int pool_threads() {
  const int t = t_override > 0 ? t_override : omp_get_max_threads();
  return t < 1 ? 1 : t;
}

void parallel_chunks(std::int64_t n, std::int64_t grain, bool parallel, ChunkFn fn, void* ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int nt = (parallel && n > grain && !t_in_worker) ? pool_threads() : 1;
  if (nt <= 1) return serial(n, grain, fn, ctx);
  Pool& pool = Pool::get();
  std::unique_lock<std::mutex> busy(pool.dispatch, std::try_to_lock);
  if (!busy.owns_lock()) return serial(n, grain, fn, ctx);
  pool.ensure_workers(nt - 1);
  auto job = std::make_shared<Job>();
  job->fn = fn;
  job->ctx = ctx;
  job->n = n;
  job->grain = grain;
  job->nthreads = nt;
  std::fegetenv(&job->env);
  pool.post(job);
  run_chunks(*job, 0);
  // wait only for the chunks workers have claimed (all are claimed once run_chunks returns)
  if (!spin_until([&] { return job->done.load(std::memory_order_acquire) == n; })) {
    std::unique_lock<std::mutex> lk(job->m);
    job->cv.wait(lk, [&] { return job->done.load(std::memory_order_acquire) == n; });
  }
  pool.retire();
}

}  // namespace fastcert
