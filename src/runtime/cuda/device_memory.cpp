#include "runtime/cuda/device_memory.h"

#include <cuda_runtime_api.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "model/layer_linears.h"
#include "runtime/backend.h"
#include "runtime/cuda/linear.h"

namespace uberlm::gpu {

namespace {
constexpr int64_t kMargin = int64_t{512} << 20;  // CUDA context, graphs, the GEMV's launch needs
double gib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); }
}  // namespace

void DeviceMemory::layout_runtime(Arena& arena, int64_t num_kv_blocks) {
  layout_step_buffers(arena, config_, request_.limits, request_.gathering_ranks, request_.lm_head_rows, buffers);
  if (request_.large_m) {
    gemm_scratch_elements = 0;
    for (const DeviceLinear* w : all_linear_layers(model, config_)) {
      if (w->nvfp4) gemm_scratch_elements = std::max(gemm_scratch_elements, w->out * w->in_padded);
    }
    gemm_scratch = gemm_scratch_elements > 0 ? arena.take<uint16_t>(kGemmScratchSlots * gemm_scratch_elements) : nullptr;
    gemm_workspace = arena.take<uint8_t>(cuda::kGemmWorkspaceBytes);
  }
  if (request_.small_m_gemm) {
    // A launch's row tiles are at most those of one decoder layer's tiled layers together (its groups are parts).
    int64_t launch_tiles = model.lm_head.wgmma_tiles ? cuda::gemm_nvfp4_wgmma_row_tiles(model.lm_head.out) : 0;
    for (const DeviceLayer& layer : model.layers) {
      int64_t tiles = 0;
      for_each_linear(config_, layer, [&](const LinearSpec&, const DeviceLinear& w) {
        if (w.wgmma_tiles) tiles += cuda::gemm_nvfp4_wgmma_row_tiles(w.out);
      });
      launch_tiles = std::max(launch_tiles, tiles);
    }
    small_m_gemm_workspace.partial_floats = cuda::gemm_nvfp4_wgmma_workspace_floats(launch_tiles);
    small_m_gemm_workspace.tiles = launch_tiles;
    small_m_gemm_workspace.partials = arena.take<float>(small_m_gemm_workspace.partial_floats);
    small_m_gemm_workspace.tile_arrivals = arena.take<int>(launch_tiles);  // zeroed with the arena
  }
  const int64_t before_caches = arena.used();
  layout_caches(arena, config_, num_kv_blocks, request_.limits.max_slots, request_.prefix_snapshots, caches);
  const int64_t cache_bytes = arena.used() - before_caches;
  kv_bytes_ = num_kv_blocks * kv_block_bytes(config_);
  snapshot_bytes_ = static_cast<int64_t>(request_.prefix_snapshots) * config_.num_layers_of(LayerKind::GatedDeltaNet) *
                    (conv_state_floats(config_) + recurrent_state_floats(config_)) * static_cast<int64_t>(sizeof(float));
  state_bytes_ = cache_bytes - kv_bytes_ - snapshot_bytes_;
}

DeviceMemory::DeviceMemory(const ModelConfig& config, const MemoryPlanRequest& request)
    : config_(config), request_(request) {
  const StepLimits& limits = request.limits;
  if (limits.max_slots < 1 || limits.max_tokens < 1 || limits.max_logit_rows < 1 || limits.max_context < 1) {
    fail("CudaBackend: max_slots, max_batch_tokens, max_logit_rows and max_context must be positive");
  }
  if (request.prefix_snapshots < 0) fail("CudaBackend: prefix_snapshots must be >= 0, got {}", request.prefix_snapshots);
  Arena weight_plan;
  layout_device_model(weight_plan, config, request.formats, request.lm_head_rows, request.small_m_gemm, model);
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t num_kv_blocks =
      plan_kv_blocks(weight_plan.used(), static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes));
  Arena runtime_plan;
  layout_runtime(runtime_plan, num_kv_blocks);
  const int64_t needed = weight_plan.used() + runtime_plan.used();
  if (needed + kMargin > static_cast<int64_t>(free_bytes)) {
    fail("CudaBackend: the plan needs {:.2f} GiB (weights {:.2f}, KV cache {:.2f} for {} blocks of {} tokens, "
         "Gated DeltaNet state {:.2f} for {} slots and {:.2f} for {} prefix snapshots, activations and workspace "
         "{:.2f} for {} tokens) plus {:.2f} GiB margin, but the GPU has {:.2f} GiB free of {:.2f}",
         gib(needed), gib(weight_plan.used()), gib(kv_bytes_), num_kv_blocks, kKvBlockSize, gib(state_bytes_),
         limits.max_slots, gib(snapshot_bytes_), request.prefix_snapshots,
         gib(runtime_plan.used() - kv_bytes_ - state_bytes_ - snapshot_bytes_), limits.max_tokens, gib(kMargin),
         gib(static_cast<int64_t>(free_bytes)), gib(static_cast<int64_t>(total_bytes)));
  }
  weight_bytes_ = weight_plan.used();
  for (const DeviceLinear* w : all_linear_layers(model, config)) {
    if (w->wgmma_tiles) wgmma_tile_bytes_ += cuda::nvfp4_wgmma_layout_bytes(w->out, w->in_padded);
  }
  runtime_bytes_ = runtime_plan.used();
  CUDA_CHECK(cudaMalloc(&weight_memory_, weight_bytes_));
  CUDA_CHECK(cudaMalloc(&runtime_memory_, runtime_bytes_));
  Arena weight_arena(reinterpret_cast<uintptr_t>(weight_memory_));
  Arena runtime_arena(reinterpret_cast<uintptr_t>(runtime_memory_));
  layout_device_model(weight_arena, config, request.formats, request.lm_head_rows, request.small_m_gemm, model);
  layout_runtime(runtime_arena, num_kv_blocks);
  // Zero everything once: the K padding of weights and activation rows must stay zero (kernels never
  // write it), and the argmax scratch, the fused decode task counts and the conv ring readers start at zero.
  CUDA_CHECK(cudaMemset(runtime_memory_, 0, runtime_bytes_));
  CUDA_CHECK(cudaMemset(weight_memory_, 0, weight_bytes_));
  // The memsets run on the legacy default stream, which the backend's non-blocking stream does not wait
  // for: without this, random weight fills and the first forward's kernels could run before the zeros land
  // (seen on the H200: a second synthetic 27B backend's weights all zero).
  CUDA_CHECK(cudaDeviceSynchronize());
  const int64_t meta_count = StepMetadata::count(limits);
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&meta_host), meta_count * sizeof(int32_t)));
  std::memset(meta_host, 0, meta_count * sizeof(int32_t));
  host_meta = StepMetadata::at(meta_host, limits);
}

DeviceMemory::~DeviceMemory() {
  if (meta_host) cudaFreeHost(meta_host);
  if (weight_memory_) cudaFree(weight_memory_);
  if (runtime_memory_) cudaFree(runtime_memory_);
}

int64_t DeviceMemory::plan_kv_blocks(int64_t weight_bytes, int64_t free_bytes, int64_t total_bytes) {
  if (request_.num_kv_blocks < 0) fail("CudaBackend: num_kv_blocks must be >= 0, got {}", request_.num_kv_blocks);
  const double utilization = request_.gpu_memory_utilization;
  if (!(utilization >= 0 && utilization <= 1)) {
    fail("CudaBackend: gpu_memory_utilization must be in [0, 1] (0: no memory-based sizing), got {}", utilization);
  }
  const int64_t per_slot = request_.limits.max_blocks_per_slot();
  int64_t blocks = per_slot * request_.limits.max_slots;
  const int64_t block_bytes = kv_block_bytes(config_);
  if (request_.num_kv_blocks > 0) {
    blocks = request_.num_kv_blocks;
  } else if (utilization > 0 && block_bytes > 0) {
    // Runtime bytes without KV (a planning pass with an empty pool) and what aligning each pool can add.
    Arena without_kv;
    layout_runtime(without_kv, 0);
    const int64_t pools = 2 * static_cast<int64_t>(config_.num_layers_of(LayerKind::FullAttention));
    const int64_t held_by_others = total_bytes - free_bytes;
    const int64_t allowed = std::min(static_cast<int64_t>(utilization * static_cast<double>(total_bytes)) - held_by_others,
                                     free_bytes - kMargin);
    const int64_t budget = allowed - weight_bytes - without_kv.used() - pools * kArenaAlignment;
    blocks = std::max<int64_t>(budget, 0) / block_bytes;
    spdlog::info("cuda backend: {:.0f}% of {:.2f} GiB ({:.2f} GiB held before load) minus weights {:.2f} GiB and "
                 "activations/states/prefix snapshots {:.2f} GiB leaves {:.2f} GiB: {} KV blocks of {} tokens",
                 100 * utilization, gib(total_bytes), gib(held_by_others), gib(weight_bytes), gib(without_kv.used()),
                 gib(std::max<int64_t>(budget, 0)), blocks, kKvBlockSize);
  }
  if (blocks < per_slot && blocks > 0 && request_.context_fits_pool) {
    request_.limits.max_context = blocks * kKvBlockSize;
    spdlog::warn("cuda backend: the KV pool holds {} tokens, fewer than a sequence of {}: sequences are limited to "
                 "{} tokens (a larger --gpu-memory-utilization raises it)",
                 blocks * kKvBlockSize, per_slot * kKvBlockSize, request_.limits.max_context);
    return blocks;
  }
  if (blocks < per_slot) {
    fail("CudaBackend: a KV pool of {} blocks ({} tokens) cannot hold one sequence of max_context {} tokens", blocks,
         blocks * kKvBlockSize, request_.limits.max_context);
  }
  return blocks;
}

std::string DeviceMemory::summary() const {
  const StepLimits& limits = request_.limits;
  return fmt::format("weights {:.3f} GiB (of which the wgmma GEMM's tiles {:.3f}), KV cache {:.3f} GiB ({} blocks = {} tokens; {} slots of up to {} tokens), "
                     "Gated DeltaNet state {:.3f} GiB, prefix snapshots {:.3f} GiB ({}), activations {:.3f} GiB ({} "
                     "tokens per forward) of which the prefill GEMM's NVFP4 scratch {:.3f} GiB",
                     gib(weight_bytes_), gib(wgmma_tile_bytes_), gib(kv_bytes_), caches.num_kv_blocks, caches.num_kv_blocks * kKvBlockSize,
                     limits.max_slots, limits.max_context, gib(state_bytes_), gib(snapshot_bytes_),
                     caches.prefix_snapshots, gib(runtime_bytes_ - kv_bytes_ - state_bytes_ - snapshot_bytes_),
                     limits.max_tokens, gib(kGemmScratchSlots * gemm_scratch_elements * 2));
}

}  // namespace uberlm::gpu
