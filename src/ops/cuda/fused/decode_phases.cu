#include "ops/cuda/fused/decode_phases.h"

#include <cstdio>
#include <initializer_list>
#include <limits>

#include "ops/cuda/alignment.h"
#include "ops/cuda/attention_decode.cuh"
#include "ops/cuda/device_capability.h"
#include "ops/cuda/fused/gated_delta_net_layer.cuh"
#include "ops/cuda/fused/qk_norm_rope_kv_append.cuh"
#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_nvfp4.cuh"
#include "ops/cuda/gemv_tile.cuh"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kDepth = 4;  // the GEMV tasks' cp.async pipeline (the H200 table's decode winners)
// The delta rule's tasks: the decode blocks of many sequences (two threads a state column of up to 128 columns,
// key rows up to 128: 64 a thread).
constexpr int kColumns = 128, kParts = 2, kMaxKeyRows = 128, kConvHistory = 3;
constexpr int kNormWidth = 4;  // the quad RMSNorm rows
static_assert(kColumns * kParts == kThreads);
static_assert(kNormThreads<kNormWidth> == kThreads, "the quad RMSNorm row takes the whole block");
constexpr int kFinishedBlocks = kMaxDecodePhases;  // the task counts' last int

// What a launched phase runs: the host's kinds, with an Attention phase launched as two.
enum class TaskKind { AddRmsNorm, Linear, LinearSwiglu, DeltaNetHeads, AttentionPrep, AttentionPartial, AttentionCombine };

// A phase as the kernel takes it: the host's DecodePhase with device types and its task count.
struct DevicePhase {
  TaskKind kind;
  int tasks;
  NormPhase norm;
  GemvSegments<Nvfp4Format> segments;  // Linear, LinearSwiglu
  const __nv_bfloat16* linear_x;
  int64_t k;
  int row_tiles, k_split;
  GemvSwigluEpilogue swiglu;
  DeltaNetPhase delta_net;
  AttentionPrepPhase attention_prep;
  AttentionPhase attention;
};

// The attention prep's (token, head) items a task: one a warp. The attention's partial blocks take this many
// query heads each (fewer than the standalone kernel's, for the registers of two blocks an SM: the same bits).
constexpr int kPrepItemsPerTask = kWarps;
constexpr int kAttentionGroup = 2;
static_assert(kAttentionPartialWarps <= kWarps);

struct PhasesArgs {
  DevicePhase phase[kMaxDecodePhases];
  int count;
  int tokens;
  DeviceChunks chunks;
  int32_t* task_counts;
  uint64_t* task_trace;
};
static_assert(sizeof(PhasesArgs) <= 32764, "a kernel's parameters (CUDA 12.1 and later)");

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

__device__ __forceinline__ int32_t load_relaxed(const int32_t* address) {
  int32_t value;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(address) : "memory");
  return value;
}

// A task's wait (the wait_for_inputs of the device functions, called by every thread of a warp together): for the
// kernel before this launch (its outputs are this launch's inputs, and it may still read what this launch writes),
// then until `target` tasks of the phase before have counted themselves done. Lane 0 polls with relaxed loads (an
// acquire may invalidate the SM's L1, which the other block of the SM reads from); then each thread's one acquire
// load makes the counted tasks' writes visible to its plain loads. With UBERLM_BOUNDED_TASK_WAITS defined (a
// debug build, CMake option of the same name) a wait gives up after that many polls, says which block waited for
// which phase and count, and traps.
struct AfterPhase {
  const int32_t* count;  // null: the first phase, which waits for nothing of this launch
  int target;
  int phase;        // the phase waited for
  uint64_t* trace;  // the task's trace entry, or null

  __device__ __forceinline__ void operator()() const {
    wait_for_previous_kernel();
    wait_for_count();
    if (trace && threadIdx.x == 0) trace[2] = global_time_ns();
  }

  __device__ __forceinline__ void wait_for_count() const {
    if (!count) return;
    if (threadIdx.x % 32 == 0) {
#if defined(UBERLM_BOUNDED_TASK_WAITS)
      for (long long polls = 0; load_relaxed(count) < target; ++polls) {
        if (polls == UBERLM_BOUNDED_TASK_WAITS) {
          printf("decode_phases: block %d warp %d waited %lld polls for phase %d: %d of %d tasks done\n", blockIdx.x,
                 threadIdx.x / 32, polls, phase, load_relaxed(count), target);
          __trap();
        }
        __nanosleep(64);
      }
#else
      while (load_relaxed(count) < target) __nanosleep(64);
#endif
    }
    __syncwarp();
    load_acquire(count);  // >= target: counts only grow within a launch
  }
};

// Tasks dealt before phase p's.
__device__ __forceinline__ int tasks_before(const PhasesArgs& args, int p) {
  int dealt = 0;
  for (int q = 0; q < p; ++q) dealt += args.phase[q].tasks;
  return dealt;
}

// The tasks of every phase are dealt round-robin over the blocks as one sequence, so a phase starts on the
// blocks after those that took the previous phase's last tasks.
__device__ __forceinline__ int first_task(const PhasesArgs& args, int p) {
  const int blocks = static_cast<int>(gridDim.x);
  return ((static_cast<int>(blockIdx.x) - tasks_before(args, p) % blocks) + blocks) % blocks;
}

// Task t of phase p: its trace entry (null without a trace), stamped with the block and the start.
__device__ __forceinline__ uint64_t* start_task(const PhasesArgs& args, int p, int t) {
  if (!args.task_trace) return nullptr;
  uint64_t* entry = args.task_trace + static_cast<int64_t>(tasks_before(args, p) + t) * kTaskTraceFields;
  if (threadIdx.x == 0) {
    entry[0] = blockIdx.x;
    entry[1] = global_time_ns();
    entry[2] = entry[1];  // for the tasks of the first phase, which wait for nothing in the launch
  }
  return entry;
}

// After a task: the block's writes, then one count. The barrier also keeps the next task from overwriting
// shared memory this one still reads.
__device__ __forceinline__ void count_done(int32_t* count, uint64_t* trace) {
  __syncthreads();
  if (threadIdx.x == 0) {
    if (trace) trace[3] = global_time_ns();  // before the count: a task that waited for this one ends its wait later
    __threadfence();  // releases every thread's writes (ordered before it by the barrier) with the count
    atomicAdd(count, 1);
  }
}

// Row t of a norm phase; each thread copies to the snapshot the values of x it wrote itself.
__device__ __forceinline__ void norm_task(const NormPhase& n, int t, const AfterPhase& wait) {
  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(n.out);
  if (n.delta) {
    add_rms_norm_row<true, kNormWidth>(n.x, n.delta, nullptr, t, n.dim, n.weight, n.offset, n.eps, out, n.out_stride,
                                       wait);
  } else {
    add_rms_norm_row<false, kNormWidth>(n.x, nullptr, nullptr, t, n.dim, n.weight, n.offset, n.eps, out, n.out_stride,
                                        wait);
  }
  if (!n.snapshot) return;
  const float4* row = reinterpret_cast<const float4*>(n.x + t * n.dim);
  float4* copy = reinterpret_cast<float4*>(n.snapshot + t * n.dim);
  for (int64_t q = threadIdx.x; q < n.dim / kNormWidth; q += kThreads) copy[q] = row[q];
}

// Task t of an AttentionPrep phase: a warp an item; `smem` holds each warp's stage.
__device__ __forceinline__ void attention_prep_task(const AttentionPrepPhase& a, int tokens, int t, float* smem,
                                                    const AfterPhase& wait) {
  wait();
  const int warp = threadIdx.x / 32;
  const int64_t item = static_cast<int64_t>(t) * kPrepItemsPerTask + warp;
  if (item >= int64_t{tokens} * (a.shape.num_heads + a.shape.num_kv_heads)) return;
  qk_norm_rope_kv_append_item(a.q_proj, a.k, a.positions, item, a.shape, a.inv_freq, a.q_norm, a.k_norm, a.query,
                              a.cache, smem + warp * kAttentionMaxHeadDim);
}

// Task t of an AttentionPartial phase: block (token, kv head chunk, split) of the partial pass.
__device__ __forceinline__ void attention_partial_task(const AttentionPhase& a, int tokens, int t, float* smem,
                                                       const AfterPhase& wait) {
  wait();
  const int chunks = a.layout.num_kv_heads * attention_head_chunks<kAttentionGroup>(a.num_heads, a.layout.num_kv_heads);
  const int per_token = chunks * a.splits;
  attention_partial_block<kAttentionGroup>(a.query, a.slots, a.positions, a.num_heads, a.block_tables, a.layout,
                          static_cast<const __nv_bfloat16*>(a.key_cache), static_cast<const __nv_bfloat16*>(a.value_cache),
                          a.splits, a.workspace, tokens, t / per_token, t % per_token / a.splits, t % a.splits,
                          *reinterpret_cast<AttentionPartialShared<kAttentionGroup>*>(smem));
}

template <int kRows>
__device__ __forceinline__ void run_task(const PhasesArgs& args, const DevicePhase& p, int t, float* smem,
                                         const AfterPhase& wait) {
  switch (p.kind) {
    case TaskKind::AddRmsNorm:
      norm_task(p.norm, t, wait);
      break;
    case TaskKind::Linear:
      if (p.row_tiles == 2) {
        gemv_block<Nvfp4Format, 1, 2, kDepth, true, false>(p.segments, p.linear_x, args.tokens, p.k, p.k_split,
                                                           GemvStoreEpilogue{false}, t, smem, wait);
      } else {
        gemv_block<Nvfp4Format, 1, 1, kDepth, true, false>(p.segments, p.linear_x, args.tokens, p.k, p.k_split,
                                                           GemvStoreEpilogue{false}, t, smem, wait);
      }
      break;
    case TaskKind::LinearSwiglu:
      gemv_block<Nvfp4Format, 1, 2, kDepth, true, false>(p.segments, p.linear_x, args.tokens, p.k, p.k_split,
                                                         p.swiglu, t, smem, wait);
      break;
    case TaskKind::AttentionPrep:
      attention_prep_task(p.attention_prep, args.tokens, t, smem, wait);
      break;
    case TaskKind::AttentionPartial:
      attention_partial_task(p.attention, args.tokens, t, smem, wait);
      break;
    case TaskKind::AttentionCombine:
      wait();
      attention_combine_row<false>(p.attention.workspace, args.tokens, p.attention.num_heads, p.attention.layout.head_dim,
                            p.attention.splits, p.attention.out, t);
      break;
    case TaskKind::DeltaNetHeads: {
      const DeltaNetPhase& n = p.delta_net;
      gated_delta_net_block<kRows, kConvHistory, kColumns, 1, kParts>(
          n.qkv, n.z, n.a, n.b, n.weights, args.chunks, std::numeric_limits<int64_t>::max(), n.dims, n.state,
          static_cast<__nv_bfloat16*>(n.out), n.out_stride, t / n.dims.num_v_heads, t % n.dims.num_v_heads, 0, 1,
          wait);
      break;
    }
  }
}

// Two blocks an SM: 128 registers a thread (the kRows = 64 instance spills a few bytes for it).
template <int kRows>
__global__ void __launch_bounds__(kThreads, 2) decode_phases_kernel(const __grid_constant__ PhasesArgs args) {
  extern __shared__ __align__(16) float gemv_smem[];
  const int blocks = static_cast<int>(gridDim.x);
  int32_t* const counts = args.task_counts;
  for (int p = 0; p < args.count; ++p) {
    // Every block lets the next kernel start at the last phase, having waited for the one before (a block with no
    // task before it has not yet).
    if (p == args.count - 1) begin_dependent_kernel();
    const DevicePhase& phase = args.phase[p];
    for (int t = first_task(args, p); t < phase.tasks; t += blocks) {
      uint64_t* const trace = start_task(args, p, t);
      const AfterPhase wait = p == 0 ? AfterPhase{nullptr, 0, 0, nullptr}
                                     : AfterPhase{counts + p - 1, args.phase[p - 1].tasks, p - 1, trace};
      run_task<kRows>(args, phase, t, gemv_smem, wait);
      count_done(counts + p, trace);
    }
  }
  // The last block to finish sets the counts back to zero: every other block is past its last wait by then.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(counts + kFinishedBlocks, 1) == blocks - 1) {
      for (int i = 0; i < kDecodePhaseCounts; ++i) counts[i] = 0;
    }
  }
}

int64_t rows_per_task(const DecodePhase& p) {
  const int distinct_tiles = p.kind == DecodePhaseKind::LinearSwiglu ? 1 : p.linear.row_tiles;
  return int64_t{kGemvRowsPerTile} * distinct_tiles * (kWarps / p.linear.k_split);
}

// The phases as the kernel takes them (tasks for `tokens` sequences): one for each host phase, two for Attention.
int device_phases(const DecodePhase& p, int tokens, DevicePhase* out) {
  DevicePhase d{};
  d.norm = p.norm;
  d.delta_net = p.delta_net;
  d.attention_prep = p.attention_prep;
  d.attention = p.attention;
  switch (p.kind) {
    case DecodePhaseKind::AddRmsNorm:
      d.kind = TaskKind::AddRmsNorm;
      d.tasks = tokens;
      break;
    case DecodePhaseKind::Linear:
    case DecodePhaseKind::LinearSwiglu: {
      const LinearPhase& l = p.linear;
      const bool paired = p.kind == DecodePhaseKind::LinearSwiglu;
      d.kind = paired ? TaskKind::LinearSwiglu : TaskKind::Linear;
      for (int i = 0; i < l.count; ++i) d.segments.add(nvfp4_format(l.weights[i]), l.weights[i].rows, l.outputs[i]);
      d.tasks = d.segments.assign_blocks(rows_per_task(p), paired);
      d.linear_x = static_cast<const __nv_bfloat16*>(l.x);
      d.k = l.weights[0].cols;
      d.row_tiles = l.row_tiles;
      d.k_split = l.k_split;
      d.swiglu = GemvSwigluEpilogue{static_cast<__nv_bfloat16*>(l.swiglu_out), l.swiglu_stride};
      break;
    }
    case DecodePhaseKind::DeltaNetHeads:
      d.kind = TaskKind::DeltaNetHeads;
      d.tasks = tokens * p.delta_net.dims.num_v_heads;
      break;
    case DecodePhaseKind::AttentionPrep: {
      const AttentionPrepShape& shape = p.attention_prep.shape;
      d.kind = TaskKind::AttentionPrep;
      d.tasks = static_cast<int>((int64_t{tokens} * (shape.num_heads + shape.num_kv_heads) + kPrepItemsPerTask - 1) /
                                 kPrepItemsPerTask);
      break;
    }
    case DecodePhaseKind::Attention: {
      const AttentionPhase& a = p.attention;
      d.kind = TaskKind::AttentionPartial;
      d.tasks = tokens * a.layout.num_kv_heads * attention_head_chunks<kAttentionGroup>(a.num_heads, a.layout.num_kv_heads) *
                a.splits;
      out[0] = d;
      d.kind = TaskKind::AttentionCombine;
      d.tasks = tokens * a.num_heads;
      out[1] = d;
      return 2;
    }
  }
  out[0] = d;
  return 1;
}

// Every host phase's device phases into args (returns false past kMaxDecodePhases).
bool device_phases(const DecodePhases& phases, int tokens, PhasesArgs& args) {
  args.count = 0;
  for (int p = 0; p < phases.count; ++p) {
    DevicePhase expanded[2];
    const int n = device_phases(phases.phase[p], tokens, expanded);
    if (args.count + n > kMaxDecodePhases) return false;
    for (int i = 0; i < n; ++i) args.phase[args.count++] = expanded[i];
  }
  return true;
}

// The grid: as many blocks as are resident at once on an idle device, asked once a process (a decode step launches
// this every layer, eagerly when profiled).
template <int kRows>
int resident_blocks(int smem) {
  static const int blocks = [smem] {
    int sms = 0, per_sm = 0;
    if (current_device_sm_count(sms) != cudaSuccess ||
        allow_dynamic_shared_memory(decode_phases_kernel<kRows>, smem) != cudaSuccess ||
        cudaFuncSetAttribute(decode_phases_kernel<kRows>, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_phases_kernel<kRows>, kThreads, smem) !=
            cudaSuccess) {
      return 0;
    }
    return sms * per_sm;
  }();
  return blocks;
}

template <int kRows>
cudaError_t launch_rows(const PhasesArgs& args, DecodePhasesLaunch launch, cudaStream_t stream) {
  const auto kernel = decode_phases_kernel<kRows>;
  // The GEMV tasks' cp.async stages (reused by their reductions), two row tiles a warp at most.
  const int smem = gemv_smem_bytes<Nvfp4Format, 1, 2, kDepth, true>(kWarps);
  const cudaError_t allowed = allow_dynamic_shared_memory(kernel, smem);
  if (allowed != cudaSuccess) return allowed;
  const int blocks = resident_blocks<kRows>(smem);
  if (blocks < 1) return cudaErrorInvalidConfiguration;
  if (launch == DecodePhasesLaunch::Programmatic) {
    return launch_dependent(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), static_cast<size_t>(smem),
                            stream, args);
  }
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

bool one_of(int value, std::initializer_list<int> allowed) {
  for (int a : allowed) {
    if (value == a) return true;
  }
  return false;
}

std::string norm_unsupported(const NormPhase& n) {
  if (n.dim % kNormWidth != 0 || n.dim > kRmsNormMaxDim) return "a norm dim that is a multiple of 4 up to 8192";
  if (!aligned(n.x, 16) || (n.delta && !aligned(n.delta, 16)) || !aligned(n.weight, 16) || !aligned(n.out, 8) ||
      n.out_stride % kNormWidth != 0 || (n.snapshot && !aligned(n.snapshot, 16))) {
    return "16-byte aligned norm rows";
  }
  return "";
}

std::string linear_unsupported(const DecodePhase& p) {
  const LinearPhase& l = p.linear;
  const bool paired = p.kind == DecodePhaseKind::LinearSwiglu;
  if (paired ? l.count != 2 || l.row_tiles != 2 : l.count < 1 || l.count > 4 || !one_of(l.row_tiles, {1, 2})) {
    return "1..4 linear weights of one or two row tiles a warp (the SwiGLU pair: 2 of two)";
  }
  if (!one_of(l.k_split, {1, 2, 4, 8})) return "a K split of 1, 2, 4 or 8 warps";
  for (int i = 0; i < l.count; ++i) {
    const Nvfp4Weight& w = l.weights[i];
    if (w.cols != l.weights[0].cols || w.cols % kGemvKMultiple != 0 || w.code_order != Nvfp4CodeOrder::GemvTiled) {
      return "NVFP4 weights of one K, a multiple of 32, in the GEMV's tiled code order";
    }
  }
  if (paired && l.weights[0].rows != l.weights[1].rows) return "gate and up of equal rows";
  return "";
}

std::string attention_prep_unsupported(const AttentionPrepPhase& a) {
  const AttentionPrepShape& s = a.shape;
  if (s.head_dim > kAttentionMaxHeadDim || s.rotary_dim > s.head_dim || s.rotary_dim % 2 != 0 ||
      a.cache.layout.num_kv_heads != s.num_kv_heads || a.cache.layout.head_dim != s.head_dim) {
    return "an attention head dim up to 256, an even rotary dim within it, and the cache's shape";
  }
  return "";
}

std::string attention_unsupported(const AttentionPhase& a) {
  if (a.layout.head_dim > kAttentionMaxHeadDim || a.layout.num_kv_heads < 1 || a.num_heads % a.layout.num_kv_heads != 0 ||
      a.splits < 1 || a.splits > kAttentionMaxSplits || !a.workspace) {
    return "an attention head dim up to 256, query heads a multiple of kv heads, 1..32 splits and a workspace";
  }
  return "";
}

// The key rows a thread holds in the delta rule's tasks (the kernel instance a launch takes): 32 for key head dims
// up to 64, else 64.
int delta_rule_rows(const GatedDeltaNetDims& dims) {
  constexpr int kRowsPerThread = kMaxKeyRows / kParts;
  return dims.k_head_dim <= kRowsPerThread ? kRowsPerThread / 2 : kRowsPerThread;
}

std::string delta_net_unsupported(const DeltaNetPhase& n) {
  if (n.dims.k_head_dim > kMaxKeyRows || n.dims.v_head_dim > kColumns) return "Gated DeltaNet head dims up to 128";
  if (n.dims.conv_kernel > kConvHistory + 1) return "a conv kernel up to 4";
  if (n.dims.num_k_heads < 1 || n.dims.num_v_heads % n.dims.num_k_heads != 0) return "value heads a multiple of key heads";
  return "";
}

// The launch of `phases` for `tokens` sequences into `args` (its phases as launched and the delta rule's rows), or
// why it cannot run. The phases are expanded only once every one is known good: the expansion divides by the split
// and head counts.
std::string plan_launch(const DecodePhases& phases, int64_t tokens, PhasesArgs& args, int& rows) {
  if (tokens < 1 || tokens > kFusedDecodeMaxTokens) return "a step of 1..8 sequences";
  if (phases.count < 1 || phases.overfull) return "1..12 phases as launched";
  rows = 0;
  for (int p = 0; p < phases.count; ++p) {
    const DecodePhase& phase = phases.phase[p];
    std::string why;
    switch (phase.kind) {
      case DecodePhaseKind::AddRmsNorm:
        why = norm_unsupported(phase.norm);
        break;
      case DecodePhaseKind::Linear:
      case DecodePhaseKind::LinearSwiglu:
        why = linear_unsupported(phase);
        for (int q = 0; q < p && why.empty(); ++q) {
          const DecodePhase& earlier = phases.phase[q];
          const bool linear = earlier.kind == DecodePhaseKind::Linear || earlier.kind == DecodePhaseKind::LinearSwiglu;
          if (linear && earlier.linear.x == phase.linear.x) why = "a buffer of activations for each linear phase";
        }
        break;
      case DecodePhaseKind::AttentionPrep:
        why = attention_prep_unsupported(phase.attention_prep);
        break;
      case DecodePhaseKind::Attention:
        why = attention_unsupported(phase.attention);
        break;
      case DecodePhaseKind::DeltaNetHeads: {
        why = delta_net_unsupported(phase.delta_net);
        const int phase_rows = delta_rule_rows(phase.delta_net.dims);
        if (why.empty() && rows != 0 && rows != phase_rows) {
          why = "one key head dim class (up to 64, or up to 128) in a launch";
        }
        rows = phase_rows;
        break;
      }
    }
    if (!why.empty()) return why;
  }
  if (rows == 0) rows = kMaxKeyRows / kParts;  // no delta rule: either instance
  if (!device_phases(phases, static_cast<int>(tokens), args)) return "1..12 phases as launched";
  args.tokens = static_cast<int>(tokens);
  return "";
}

}  // namespace

int DecodePhaseTasks::total() const {
  int sum = 0;
  for (int p = 0; p < count; ++p) sum += phase[p];
  return sum;
}

DecodePhaseTasks decode_phase_tasks(const DecodePhases& phases, int64_t tokens) {
  PhasesArgs launched{};
  int rows = 0;
  DecodePhaseTasks tasks{};
  if (!plan_launch(phases, tokens, launched, rows).empty()) return tasks;
  tasks.count = launched.count;
  for (int p = 0; p < launched.count; ++p) tasks.phase[p] = launched.phase[p].tasks;
  return tasks;
}

std::string decode_phases_unsupported(const DecodePhases& phases, int64_t tokens) {
  PhasesArgs launched{};
  int rows = 0;
  return plan_launch(phases, tokens, launched, rows);
}

cudaError_t launch_decode_phases(const DecodePhases& phases, const DeviceChunks& chunks, int32_t* task_counts,
                                 uint64_t* task_trace, DecodePhasesLaunch launch, cudaStream_t stream) {
  PhasesArgs args{};
  int rows = 0;
  if (!plan_launch(phases, chunks.count, args, rows).empty()) return cudaErrorInvalidValue;
  args.chunks = chunks;
  args.task_counts = task_counts;
  args.task_trace = task_trace;
  return rows == kMaxKeyRows / kParts ? launch_rows<kMaxKeyRows / kParts>(args, launch, stream)
                                      : launch_rows<kMaxKeyRows / kParts / 2>(args, launch, stream);
}

}  // namespace uberlm::cuda
