#pragma once
// A decode step's work for 1..8 sequences as phases of tasks in one persistent launch (issue 15's fused kernels,
// bench/notes/uber.md): the unfused kernels' device functions run as tasks (add_rms_norm_row, gemv_block,
// gated_delta_net_block), so a phase computes what its unfused launch computes. Phases of a launch:
//   AddRmsNorm      one task a token row: x += delta (when set); out = RMSNorm(x) * (offset + weight); the row of
//                   x after the add copied to `snapshot` when set (`uberlm check` under graph replay)
//   Linear          the GEMV blocks of up to 4 NVFP4 weights that read the same activations (fp32 outputs), one
//                   row tile a warp (tuning w8_d4_r1_k*_async) or two (w8_d4_r2_k*_async)
//   LinearSwiglu    the MLP's gate/up pair with the SwiGLU epilogue (paired w8_d4_r2_k*_async) into bf16 rows
//   DeltaNetHeads   one task a (sequence, value head): conv, delta rule, gated norm (two threads a state column)
//   AttentionPrep   a warp a (token, head): q/k norm, RoPE, the key and value appended to the paged cache
//   Attention       two phases as launched: blocks of (token, kv head chunk, split) of the split softmax, then a
//                   task a (token, head) combining the splits with the output gate
// Two blocks an SM, the grid resident at once (DecodePhasesLaunch). Each phase is the unfused launch's device
// function with the same tunings, so an output equals the unfused launches' (launch_decode_phases_unfused) bit for
// bit, except the delta rule's at 1..3 sequences, which the unfused path runs in blocks of four threads a state
// column. Block b takes tasks b, b + grid, ... of the
// phases in turn, dealt round-robin over the blocks as one sequence; a task waits until every task of the phase
// before has counted itself done (global counts, release/acquire), so no phase waits on a grid-wide barrier it
// does not read from, and a GEMV task requests its first weight chunks before it waits. Every block lets the next
// kernel start when it reaches the last phase.
//
// The GEMV reads activations through the non-coherent load path (ld.global.nc), which sees other blocks' writes
// only if the SM has not cached those lines earlier in the launch: so each Linear phase's activations are a buffer
// no other Linear phase of the launch reads (decode_phases_unsupported checks it), written by phases before it.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "core/nvfp4.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/device_chunks.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/fused/qk_norm_rope_kv_append.h"

namespace uberlm::cuda {

inline constexpr int kMaxDecodePhases = 12;  // as launched (an Attention phase is two)
inline constexpr int64_t kFusedDecodeMaxTokens = 8;
// Ints of task counts a launch needs: one a phase and one for the blocks that have finished (the last block to
// finish sets them all back to zero, so a launch, or a graph's replay, finds them zero).
inline constexpr int kDecodePhaseCounts = kMaxDecodePhases + 1;
// uint64 values of a task's trace entry: the block that ran it, and %globaltimer (ns) at its start, at the end of
// its wait for the phase before, and at its end.
inline constexpr int kTaskTraceFields = 4;

enum class DecodePhaseKind { AddRmsNorm, Linear, LinearSwiglu, DeltaNetHeads, AttentionPrep, Attention };

struct NormPhase {
  float* x;             // [tokens, dim], the residual stream
  const float* delta;   // [tokens, dim] added to x first, or null
  const float* weight;  // [dim]
  float offset, eps;    // out = x * rsqrt(mean(x^2) + eps) * (offset + weight)
  int64_t dim;          // a multiple of 4, at most kRmsNormMaxDim
  void* out;            // bf16 [tokens, out_stride]
  int64_t out_stride;
  float* snapshot;      // [tokens, dim]: x after the add, or null
};

struct LinearPhase {
  Nvfp4Weight weights[4];  // of one K (GEMV tiled codes); LinearSwiglu: gate, up
  void* outputs[4];        // fp32 [tokens, rows]; LinearSwiglu: none
  int count;
  const void* x;           // bf16 [tokens, K]
  int row_tiles;           // 1 or 2 (LinearSwiglu: 2, gate and up)
  int k_split;             // warps of a block that split K: 1, 2, 4 or 8
  void* swiglu_out;        // LinearSwiglu: bf16 [tokens, swiglu_stride]
  int64_t swiglu_stride;
};

struct DeltaNetPhase {
  const float *qkv, *z, *a, *b;  // the input projections' outputs
  GatedDeltaNetParams weights;
  GatedDeltaNetDims dims;        // key and value head dims up to 128, conv kernel up to 4
  GatedDeltaNetState state;
  void* out;                     // bf16 [tokens, out_stride]
  int64_t out_stride;
};

// launch_qk_norm_rope_kv_append's arguments.
struct AttentionPrepPhase {
  const float* q_proj;
  float* k;
  const int32_t* positions;
  AttentionPrepShape shape;
  const float* inv_freq;
  const float* q_norm;
  const float* k_norm;
  float* query;
  KvCacheWrite cache;
};

// launch_attention_decode's arguments.
struct AttentionPhase {
  const float* query;
  const int32_t* slots;
  const int32_t* positions;
  int num_heads;
  const int32_t* block_tables;
  PagedKvLayout layout;
  const void* key_cache;
  const void* value_cache;
  int splits;
  float* workspace;
  AttentionOutput out;
};

struct DecodePhase {
  DecodePhaseKind kind;
  NormPhase norm;
  LinearPhase linear;
  DeltaNetPhase delta_net;
  AttentionPrepPhase attention_prep;
  AttentionPhase attention;
};

struct DecodePhases {
  DecodePhase phase[kMaxDecodePhases];
  int count = 0;  // phases as given (launch_decode_phases_unfused launches one or two a phase)
  bool overfull = false;  // add() was called on a full list (decode_phases_unsupported refuses it)
  // A new phase at the end; on a full list the last one, rewritten.
  DecodePhase& add(DecodePhaseKind kind) {
    if (count == kMaxDecodePhases) overfull = true;
    DecodePhase& added = phase[overfull ? kMaxDecodePhases - 1 : count++];
    added = DecodePhase{};
    added.kind = kind;
    return added;
  }
};

// Tasks of each phase of a launch over `tokens` sequences as launched (an Attention phase is two), what a task trace
// holds, in this order.
struct DecodePhaseTasks {
  int phase[kMaxDecodePhases];
  int count;
  int total() const;
};
DecodePhaseTasks decode_phase_tasks(const DecodePhases& phases, int64_t tokens);

// How the launch keeps every block resident while blocks wait for each other. Cooperative (the decoder's): the
// runtime refuses a grid that cannot be resident at once, and starts it when the kernel before has ended.
// Programmatic (tested and timed by kernel_bench, for the decoder to take if it measures faster): a dependent launch
// (kernel_util.cuh's launch_dependent) of a grid sized by the occupancy query with the most shared memory: its
// blocks are scheduled while the kernel before drains (each waits for it before reading its outputs) and all
// become resident once it has ended, as long as nothing else holds SMs meanwhile (the decode graphs run on one
// stream; MPS or a smaller carveout would deadlock it where the cooperative launch fails with an error).
enum class DecodePhasesLaunch { Cooperative, Programmatic };

// Why these phases cannot run fused for `tokens` sequences ("" when they can): too many tokens or phases (as
// launched), a shape or tuning the compiled tasks lack, or a Linear phase's activations read by another one.
std::string decode_phases_unsupported(const DecodePhases& phases, int64_t tokens);

// chunks: the step's sequences, one token each (chunks.count tokens); the DeltaNetHeads phases' chunks.
// task_counts: kDecodePhaseCounts ints, zero before the first launch. task_trace: null, or kTaskTraceFields
// uint64 for each of decode_phase_tasks' tasks.
cudaError_t launch_decode_phases(const DecodePhases& phases, const DeviceChunks& chunks, int32_t* task_counts,
                                 uint64_t* task_trace, DecodePhasesLaunch launch, cudaStream_t stream);

// The same phases as the unfused launches they replace, one or two a phase, with the same tunings (the tests' and
// kernel_bench's reference): launch_add_rms_norm (and the snapshot copy), gemv_nvfp4_multi_tuned,
// gemv_nvfp4_swiglu_tuned, launch_gated_delta_net_layer, launch_qk_norm_rope_kv_append, launch_attention_decode.
void launch_decode_phases_unfused(const DecodePhases& phases, const DeviceChunks& chunks, cudaStream_t stream);

}  // namespace uberlm::cuda
