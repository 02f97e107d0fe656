#pragma once
// Device memory, planned once at load: the model's weights in one allocation; the caches, the step buffers
// and the prefill GEMM's scratch in another; the step metadata's pinned host mirror. A plan that does not
// fit is an Error naming the numbers, before anything is allocated.
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/cuda/device_model.h"
#include "runtime/cuda/step_buffers.h"

namespace uberlm::gpu {

struct MemoryPlanRequest {
  std::vector<LinearFormat> formats;  // every linear layer's format, all_linear_layers order
  int64_t lm_head_rows = 0;           // V, or this rank's vocabulary slice
  int gathering_ranks = 0;            // with a tensor-parallel communicator (even of one rank) its size, else 0
  StepLimits limits;
  bool large_m = false;               // forwards can exceed kGemvMaxM rows: plan the cuBLAS path
  bool small_m_gemm = false;          // 17..128-row products on the wgmma GEMM: its weight tiles and workspace
  bool context_fits_pool = false;     // CudaBackendOptions::context_fits_pool
  int prefix_snapshots = 0;           // prefix caching: snapshots of one slot's Gated DeltaNet states
  // KV pool size, the first rule that applies: num_kv_blocks blocks; every block that fits in
  // gpu_memory_utilization (0, 1] of the GPU's total memory after weights, states (prefix snapshots
  // included), activations and what other processes hold (vLLM's option); max_slots x max_context tokens.
  int64_t num_kv_blocks = 0;
  double gpu_memory_utilization = 0;
};

class DeviceMemory {
 public:
  DeviceMemory(const ModelConfig& config, const MemoryPlanRequest& request);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  DeviceModel model;
  DeviceCaches caches;
  StepBuffers buffers;
  // With large_m: kGemmScratchSlots bf16 buffers of the largest NVFP4 layer, gemm_scratch_elements each: the
  // in-line dequantisation's and the prefetched weights' (LinearRunner::prefetch_dequantized).
  uint16_t* gemm_scratch = nullptr;
  int64_t gemm_scratch_elements = 0;
  uint8_t* gemm_workspace = nullptr;
  // With small_m_gemm: the wgmma GEMM's K-split sums and tile counts, enough for every layer with tiles at 64 rows.
  cuda::GemmWgmmaWorkspace small_m_gemm_workspace;
  int32_t* meta_host = nullptr;      // pinned, StepMetadata::count(limits) entries
  StepMetadata host_meta{};          // StepMetadata::at(meta_host)

  std::string summary() const;
  // limits.max_context of the request, or what the KV pool holds when context_fits_pool lowered it.
  int64_t max_context() const { return request_.limits.max_context; }

 private:
  // Planning passes (arenas at base 0) set this object's pointers to offsets; the placing pass overwrites them.
  int64_t plan_kv_blocks(int64_t weight_bytes, int64_t free_bytes, int64_t total_bytes);
  void layout_runtime(Arena& arena, int64_t num_kv_blocks);

  const ModelConfig& config_;
  MemoryPlanRequest request_;
  void* weight_memory_ = nullptr;
  void* runtime_memory_ = nullptr;
  int64_t weight_bytes_ = 0, runtime_bytes_ = 0, kv_bytes_ = 0, state_bytes_ = 0, snapshot_bytes_ = 0;
  int64_t wgmma_tile_bytes_ = 0;  // of weight_bytes_
};

}  // namespace uberlm::gpu
