#include "runtime/cuda/step_runner.h"

#include "ops/cuda/cuda_check.h"

namespace uberlm::gpu {

OpProfiler::~OpProfiler() {
  for (PendingEvent& event : pending_) {
    cudaEventDestroy(event.start);
    cudaEventDestroy(event.stop);
  }
}

void OpProfiler::begin(const char* op) {
  if (!enabled_) return;
  PendingEvent event{op, nullptr, nullptr};
  CUDA_CHECK(cudaEventCreate(&event.start));
  CUDA_CHECK(cudaEventCreate(&event.stop));
  CUDA_CHECK(cudaEventRecord(event.start, stream_));
  pending_.push_back(event);
}

void OpProfiler::end() {
  if (!enabled_) return;
  CUDA_CHECK(cudaEventRecord(pending_.back().stop, stream_));
}

void OpProfiler::collect() {
  for (PendingEvent& event : pending_) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, event.start, event.stop));
    KernelTime& entry = sums_[event.op];
    entry.op = event.op;
    entry.microseconds += 1000.0 * ms;
    ++entry.launches;
    cudaEventDestroy(event.start);
    cudaEventDestroy(event.stop);
  }
  pending_.clear();
}

std::vector<KernelTime> OpProfiler::take() {
  std::vector<KernelTime> out;
  for (auto& [op, time] : sums_) out.push_back(time);
  sums_.clear();
  return out;
}

StepGraphs::~StepGraphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
}

void StepGraphs::run(bool use_graph, int64_t key, const std::function<void()>& kernels) {
  if (!use_graph) {
    kernels();
    return;
  }
  auto found = graphs_.find(key);
  if (found == graphs_.end()) {
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      kernels();
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(status);
    found = graphs_.emplace(key, exec).first;
    ++captures_;
  }
  CUDA_CHECK(cudaGraphLaunch(found->second, stream_));
  ++replays_;
}

}  // namespace uberlm::gpu
