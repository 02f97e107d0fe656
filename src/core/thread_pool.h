#pragma once
// A fixed pool of worker threads for the CPU backend. parallel_for splits [0, n) into contiguous
// ranges, one per thread, and returns when all are done; the calling thread takes a share.
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace uberlm {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // fn(begin, end) is called on disjoint ranges covering [0, n). Calls from several threads (the ranks of
  // a CPU tensor-parallel run) take the pool one at a time; fn must not call parallel_for itself.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

  // The process-wide pool, sized by UBERLM_THREADS or the hardware concurrency.
  static ThreadPool& global();

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;  // one caller's job at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_size_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
};

}  // namespace uberlm
