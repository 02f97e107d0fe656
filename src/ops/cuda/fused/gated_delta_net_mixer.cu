#include "ops/cuda/fused/gated_delta_net_mixer.h"

#include <cstdio>
#include <limits>

#include "ops/cuda/fused/gated_delta_net_layer.cuh"
#include "ops/cuda/gemv_nvfp4.cuh"
#include "ops/cuda/gemv_tile.cuh"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
// The GEMV tasks' compiled shapes: the H200 table's winners at 1..8 tokens for the 27B's input projections
// (w8_d4_r2_k4_async) and output projection (w8_d4_r1_k8_async at 1..4 tokens).
constexpr int kDepth = 4, kInRowTiles = 2, kOutRowTiles = 1;
// The delta rule's tasks: the decode blocks of many sequences (two threads a state column of up to 128 columns,
// key rows up to 128: 64 a thread).
constexpr int kColumns = 128, kParts = 2, kMaxKeyRows = 128, kConvHistory = 3;
static_assert(kColumns * kParts == kThreads);
static_assert(kRmsNormMaxDim / 4 / kNormLoadsPerThread == kThreads, "the quad RMSNorm row takes the whole block");

enum Phase { kNormPhase, kInProjPhase, kHeadsPhase, kOutProjPhase, kPhases };
static_assert(kPhases == kGatedDeltaNetMixerPhases);
constexpr int kFinishedBlocks = kPhases;  // task_counts' last int
static_assert(kFinishedBlocks + 1 == kGatedDeltaNetMixerCounts);

struct MixerArgs {
  GemvSegments<Nvfp4Format> in_proj, out_proj;
  int in_k_split, out_k_split;
  int tasks[kPhases];
  int tokens;
  int64_t hidden;
  const float* input_norm;
  float norm_offset, norm_eps;
  float* x;
  const float* delta;
  __nv_bfloat16* h;
  const float *qkv, *z, *a, *b;
  GatedDeltaNetParams core;
  GatedDeltaNetDims dims;
  GatedDeltaNetState state;
  DeviceChunks chunks;
  __nv_bfloat16* core_out;
  int32_t* task_counts;
  uint64_t* task_trace;
};

__device__ __forceinline__ uint64_t global_time_ns() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}

__device__ __forceinline__ int32_t load_acquire(const int32_t* address) {
  int32_t value;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(address) : "memory");
  return value;
}

// A task's wait (the wait_for_inputs of the device functions): for the kernel before this launch (its outputs
// are this launch's inputs, and it may still read what this launch writes), then, by every thread, until
// `target` tasks of the phase before have counted themselves done. With UBERLM_BOUNDED_TASK_WAITS defined (a
// debug build, CMake option of the same name) a wait gives up after that many polls, says which block waited
// for which phase and count, and traps.
struct AfterPhase {
  const int32_t* count;  // null: the first phase, which waits for nothing of this launch
  int target;
  int phase;
  uint64_t* trace;  // the task's trace entry, or null

  __device__ __forceinline__ void operator()() const {
    wait_for_previous_kernel();
    wait_for_count();
    if (trace && threadIdx.x == 0) trace[2] = global_time_ns();
  }

  __device__ __forceinline__ void wait_for_count() const {
    if (!count) return;
#if defined(UBERLM_BOUNDED_TASK_WAITS)
    for (long long polls = 0; load_acquire(count) < target; ++polls) {
      if (polls == UBERLM_BOUNDED_TASK_WAITS) {
        printf("gated_delta_net_mixer: block %d thread %d waited %lld polls for phase %d: %d of %d tasks done\n",
               blockIdx.x, threadIdx.x, polls, phase, load_acquire(count), target);
        __trap();
      }
      __nanosleep(64);
    }
#else
    while (load_acquire(count) < target) __nanosleep(64);
#endif
  }
};

// Tasks dealt before `phase`'s.
__device__ __forceinline__ int tasks_before(const MixerArgs& args, int phase) {
  int dealt = 0;
  for (int p = 0; p < phase; ++p) dealt += args.tasks[p];
  return dealt;
}

// The tasks of every phase are dealt round-robin over the blocks as one sequence, so a phase starts on the
// blocks after those that took the previous phase's last tasks.
__device__ __forceinline__ int first_task(const MixerArgs& args, int phase) {
  const int blocks = static_cast<int>(gridDim.x);
  return ((static_cast<int>(blockIdx.x) - tasks_before(args, phase) % blocks) + blocks) % blocks;
}

// Task t of `phase`: its trace entry (null without a trace), stamped with the block and the start.
__device__ __forceinline__ uint64_t* start_task(const MixerArgs& args, int phase, int t) {
  if (!args.task_trace) return nullptr;
  uint64_t* entry = args.task_trace + static_cast<int64_t>(tasks_before(args, phase) + t) * kTaskTraceFields;
  if (threadIdx.x == 0) {
    entry[0] = blockIdx.x;
    entry[1] = global_time_ns();
    entry[2] = entry[1];  // the first phase's tasks wait for nothing in the launch
  }
  return entry;
}

// The wait of task t of `phase` for every task of the phase before.
__device__ __forceinline__ AfterPhase after_phase(const MixerArgs& args, int phase, uint64_t* trace) {
  return {args.task_counts + phase - 1, args.tasks[phase - 1], phase - 1, trace};
}

// After a task: the block's writes, then one count. The barrier also keeps the next task from overwriting
// shared memory this one still reads.
__device__ __forceinline__ void count_done(int32_t* count, uint64_t* trace) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // releases every thread's writes (ordered before it by the barrier) with the count
    atomicAdd(count, 1);
    if (trace) trace[3] = global_time_ns();
  }
}

// Two blocks an SM: 128 registers a thread (the kRows = 64 instance spills 24 bytes for it).
template <int kRows>
__global__ void __launch_bounds__(kThreads, 2) gated_delta_net_mixer_kernel(const __grid_constant__ MixerArgs args) {
  extern __shared__ __align__(16) float gemv_smem[];
  const int blocks = static_cast<int>(gridDim.x);
  int32_t* const counts = args.task_counts;
  for (int t = first_task(args, kNormPhase); t < args.tasks[kNormPhase]; t += blocks) {
    uint64_t* const trace = start_task(args, kNormPhase, t);
    const AfterPhase first{nullptr, 0, kNormPhase, nullptr};
    if (args.delta) {
      add_rms_norm_row<true, 4>(args.x, args.delta, nullptr, t, args.hidden, args.input_norm, args.norm_offset,
                                args.norm_eps, args.h, args.in_proj.formats[0].k_size, first);
    } else {
      add_rms_norm_row<false, 4>(args.x, nullptr, nullptr, t, args.hidden, args.input_norm, args.norm_offset,
                                 args.norm_eps, args.h, args.in_proj.formats[0].k_size, first);
    }
    count_done(counts + kNormPhase, trace);
  }
  for (int t = first_task(args, kInProjPhase); t < args.tasks[kInProjPhase]; t += blocks) {
    uint64_t* const trace = start_task(args, kInProjPhase, t);
    gemv_block<Nvfp4Format, 1, kInRowTiles, kDepth, true, false>(
        args.in_proj, args.h, args.tokens, args.in_proj.formats[0].k_size, args.in_k_split, GemvStoreEpilogue{false},
        t, gemv_smem, after_phase(args, kInProjPhase, trace));
    count_done(counts + kInProjPhase, trace);
  }
  const int64_t core_out_stride = args.out_proj.formats[0].k_size;
  for (int t = first_task(args, kHeadsPhase); t < args.tasks[kHeadsPhase]; t += blocks) {
    uint64_t* const trace = start_task(args, kHeadsPhase, t);
    const int sequence = t / args.dims.num_v_heads, head = t % args.dims.num_v_heads;
    gated_delta_net_block<kRows, kConvHistory, kColumns, 1, kParts>(
        args.qkv, args.z, args.a, args.b, args.core, args.chunks, std::numeric_limits<int64_t>::max(), args.dims,
        args.state, args.core_out, core_out_stride, sequence, head, 0, 1, after_phase(args, kHeadsPhase, trace));
    count_done(counts + kHeadsPhase, trace);
  }
  for (int t = first_task(args, kOutProjPhase); t < args.tasks[kOutProjPhase]; t += blocks) {
    uint64_t* const trace = start_task(args, kOutProjPhase, t);
    gemv_block<Nvfp4Format, 1, kOutRowTiles, kDepth, true, false>(
        args.out_proj, args.core_out, args.tokens, core_out_stride, args.out_k_split, GemvStoreEpilogue{false}, t,
        gemv_smem, after_phase(args, kOutProjPhase, trace));
    count_done(counts + kOutProjPhase, trace);
  }
  // The last block to finish sets the counts back to zero: every other block is past its last wait by then.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(counts + kFinishedBlocks, 1) == blocks - 1) {
      for (int i = 0; i < kGatedDeltaNetMixerCounts; ++i) counts[i] = 0;
    }
  }
}

bool is_shape(const GemvTuning& t, int row_tiles) {
  return t.warps == kWarps && t.depth == kDepth && t.row_tiles == row_tiles &&
         t.pipeline == GemvPipeline::AsyncCopy && !t.batch_invariant && t.k_split >= 1 && kWarps % t.k_split == 0;
}

int64_t rows_per_task(const GemvTuning& t) { return int64_t{kGemvRowsPerTile} * t.row_tiles * (kWarps / t.k_split); }

// The grid: as many blocks as are resident at once on the current device, asked once a process (a decode step
// launches this every layer, eagerly when profiled).
template <int kRows>
int resident_blocks(int smem) {
  static const int blocks = [smem] {
    int device = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        allow_dynamic_shared_memory(gated_delta_net_mixer_kernel<kRows>, smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gated_delta_net_mixer_kernel<kRows>, kThreads, smem) !=
            cudaSuccess) {
      return 0;
    }
    return sms * per_sm;
  }();
  return blocks;
}

template <int kRows>
cudaError_t launch_rows(const MixerArgs& args, cudaStream_t stream) {
  const auto kernel = gated_delta_net_mixer_kernel<kRows>;
  const int in_smem = gemv_smem_bytes<Nvfp4Format, 1, kInRowTiles, kDepth, true>(kWarps);
  const int out_smem = gemv_smem_bytes<Nvfp4Format, 1, kOutRowTiles, kDepth, true>(kWarps);
  const int smem = in_smem > out_smem ? in_smem : out_smem;
  const cudaError_t allowed = allow_dynamic_shared_memory(kernel, smem);
  if (allowed != cudaSuccess) return allowed;
  const int blocks = resident_blocks<kRows>(smem);
  if (blocks < 1) return cudaErrorInvalidConfiguration;
  // Cooperative: every block must be resident at once (they wait for each other), which the runtime checks.
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.stream = stream;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args);
}

// The GEMV segments of both projections into `args` and the tasks of each phase.
GatedDeltaNetMixerTasks plan_tasks(const GatedDeltaNetMixerWeights& weights, const GatedDeltaNetMixerBuffers& buffers,
                                   const GatedDeltaNetDims& dims, int tokens, const GemvTuning& in_tuning,
                                   const GemvTuning& out_tuning, MixerArgs& args) {
  args.in_proj.add(nvfp4_format(weights.in_proj_qkv), weights.in_proj_qkv.rows, buffers.qkv);
  args.in_proj.add(nvfp4_format(weights.in_proj_z), weights.in_proj_z.rows, buffers.z);
  args.in_proj.add(nvfp4_format(weights.in_proj_b), weights.in_proj_b.rows, buffers.b);
  args.in_proj.add(nvfp4_format(weights.in_proj_a), weights.in_proj_a.rows, buffers.a);
  args.out_proj.add(nvfp4_format(weights.out_proj), weights.out_proj.rows, buffers.out);
  GatedDeltaNetMixerTasks tasks{};
  tasks.phase[kNormPhase] = tokens;
  tasks.phase[kInProjPhase] = args.in_proj.assign_blocks(rows_per_task(in_tuning), false);
  tasks.phase[kHeadsPhase] = tokens * dims.num_v_heads;
  tasks.phase[kOutProjPhase] = args.out_proj.assign_blocks(rows_per_task(out_tuning), false);
  return tasks;
}

}  // namespace

GatedDeltaNetMixerTasks gated_delta_net_mixer_tasks(const GatedDeltaNetMixerWeights& weights,
                                                    const GatedDeltaNetDims& dims, int64_t tokens,
                                                    const GemvTuning& in_tuning, const GemvTuning& out_tuning) {
  MixerArgs args{};
  return plan_tasks(weights, GatedDeltaNetMixerBuffers{}, dims, static_cast<int>(tokens), in_tuning, out_tuning, args);
}

std::string gated_delta_net_mixer_unsupported(const GatedDeltaNetDims& dims, int64_t hidden, int64_t tokens,
                                              const GemvTuning& in_tuning, const GemvTuning& out_tuning) {
  if (tokens < 1 || tokens > kGatedDeltaNetMixerMaxTokens) return "a step of 1..8 sequences";
  if (dims.k_head_dim > kMaxKeyRows || dims.v_head_dim > kColumns) return "head dims up to 128";
  if (dims.conv_kernel > kConvHistory + 1) return "a conv kernel up to 4";
  if (hidden % 4 != 0 || hidden > kRmsNormMaxDim) return "a hidden size that is a multiple of 4 up to 8192";
  if (!is_shape(in_tuning, kInRowTiles)) return "the input projections' tuning w8_d4_r2_k*_async";
  if (!is_shape(out_tuning, kOutRowTiles)) return "the output projection's tuning w8_d4_r1_k*_async";
  return "";
}

cudaError_t launch_gated_delta_net_mixer(const GatedDeltaNetMixerWeights& weights, const GatedDeltaNetDims& dims,
                                         const GatedDeltaNetState& state, const DeviceChunks& chunks, int64_t hidden,
                                         const GemvTuning& in_tuning, const GemvTuning& out_tuning,
                                         const GatedDeltaNetMixerBuffers& buffers, cudaStream_t stream) {
  if (!gated_delta_net_mixer_unsupported(dims, hidden, chunks.count, in_tuning, out_tuning).empty()) {
    return cudaErrorInvalidValue;
  }
  if (weights.out_proj.cols != dims.value_dim() || weights.in_proj_qkv.cols % kGemvKMultiple != 0 ||
      weights.in_proj_qkv.cols < hidden) {
    return cudaErrorInvalidValue;
  }
  MixerArgs args{};
  const int tokens = static_cast<int>(chunks.count);
  const GatedDeltaNetMixerTasks tasks = plan_tasks(weights, buffers, dims, tokens, in_tuning, out_tuning, args);
  for (int p = 0; p < kPhases; ++p) args.tasks[p] = tasks.phase[p];
  args.in_k_split = in_tuning.k_split;
  args.out_k_split = out_tuning.k_split;
  args.tokens = tokens;
  args.hidden = hidden;
  args.input_norm = weights.input_norm;
  args.norm_offset = weights.norm_offset;
  args.norm_eps = weights.norm_eps;
  args.x = buffers.x;
  args.delta = buffers.delta;
  args.h = static_cast<__nv_bfloat16*>(buffers.h);
  args.qkv = buffers.qkv;
  args.z = buffers.z;
  args.a = buffers.a;
  args.b = buffers.b;
  args.core = weights.core;
  args.dims = dims;
  args.state = state;
  args.chunks = chunks;
  args.core_out = static_cast<__nv_bfloat16*>(buffers.core_out);
  args.task_counts = buffers.task_counts;
  args.task_trace = buffers.task_trace;
  constexpr int kRowsPerThread = kMaxKeyRows / kParts;
  return dims.k_head_dim <= kRowsPerThread ? launch_rows<kRowsPerThread / 2>(args, stream)
                                           : launch_rows<kRowsPerThread>(args, stream);
}

}  // namespace uberlm::cuda
