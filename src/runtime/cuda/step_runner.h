#pragma once
// How a step's kernels are launched: eagerly, or a decode step captured once per batch size as a CUDA
// graph and replayed (its kernels are the eager ones with the same launch shapes, so a replay gives the
// eager result bit for bit); and the profiling pass, CUDA events around each op class.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "runtime/kernel_time.h"

namespace uberlm::gpu {

class OpProfiler {
 public:
  explicit OpProfiler(cudaStream_t stream) : stream_(stream) {}
  ~OpProfiler();
  bool enabled() const { return enabled_; }
  void set_enabled(bool enabled) { enabled_ = enabled; }
  // Events around the op class `op` (no-ops unless enabled).
  void begin(const char* op);
  void end();
  // Adds the recorded events' times to the sums (after the stream has finished them).
  void collect();
  std::vector<KernelTime> take();

 private:
  struct PendingEvent {
    std::string op;
    cudaEvent_t start, stop;
  };
  cudaStream_t stream_;
  bool enabled_ = false;
  std::vector<PendingEvent> pending_;
  std::map<std::string, KernelTime> sums_;
};

// Brackets one op class: OpScope scope(profiler, "attention");
class OpScope {
 public:
  OpScope(OpProfiler& profiler, const char* op) : profiler_(profiler) { profiler_.begin(op); }
  ~OpScope() { profiler_.end(); }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpProfiler& profiler_;
};

class StepGraphs {
 public:
  explicit StepGraphs(cudaStream_t stream) : stream_(stream) {}
  ~StepGraphs();
  // Runs `kernels` through the graph of `key` (captured on first use), or eagerly when !use_graph.
  void run(bool use_graph, int64_t key, const std::function<void()>& kernels);
  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }

 private:
  cudaStream_t stream_;
  std::map<int64_t, cudaGraphExec_t> graphs_;
  int64_t captures_ = 0, replays_ = 0;
};

}  // namespace uberlm::gpu
