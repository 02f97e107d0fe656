#pragma once
// The mixer half of a Gated DeltaNet decoder layer in a decode step of 1..8 sequences as one persistent launch
// (issue 15's first fused kernel, bench/notes/uber.md): the residual add and RMSNorm, the four input projections,
// the conv, delta rule and gated norm of every value head, and the output projection. It replaces
// launch_add_rms_norm, gemv_nvfp4_multi_tuned, launch_gated_delta_net_layer and gemv_nvfp4_tuned, whose device
// functions it runs as tasks (add_rms_norm_row, gemv_block, gated_delta_net_block):
//   phase 0: one task a token row: x += delta; h = RMSNorm(x)
//   phase 1: the input projections' GEMV blocks (tuning `in_tuning`): qkv, z, b, a (fp32)
//   phase 2: one task a (sequence, value head): conv, delta rule, gated norm -> core_out (bf16); states updated
//   phase 3: the output projection's GEMV blocks (tuning `out_tuning`) -> out (fp32)
// Two blocks an SM (as many as fit: the unfused GEMV launches of these tunings run two an SM too), the grid
// resident at once (a cooperative launch: the runtime refuses a grid that does not fit).
// Block b takes tasks b, b + grid, ... of each phase in turn; a task waits until every task of the phase before
// has counted itself done in `task_counts` (global memory, acquire/release), so nothing waits on a grid-wide
// barrier it does not read from, and a GEMV task requests its first weight chunks before it waits. With the same
// tunings each output equals the unfused launches' bit for bit, except the delta rule's at 1..3 sequences, which
// the unfused path runs in blocks of four threads a state column (here two, as it does from 4 sequences on).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "core/nvfp4.h"
#include "ops/cuda/device_chunks.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/gemv.h"

namespace uberlm::cuda {

inline constexpr int64_t kGatedDeltaNetMixerMaxTokens = 8;
// Ints of GatedDeltaNetMixerBuffers::task_counts: one a phase and one for the blocks that have finished (the last
// to finish sets them all back to zero, so a launch, or a graph's replay, finds them zero).
inline constexpr int kGatedDeltaNetMixerCounts = 5;

struct GatedDeltaNetMixerWeights {
  const float* input_norm;  // [hidden]
  float norm_offset;        // 0 or 1 (Qwen3.5's 1 + w)
  float norm_eps;
  Nvfp4Weight in_proj_qkv, in_proj_z, in_proj_b, in_proj_a;  // [*, hidden], GEMV tiled code order
  GatedDeltaNetParams core;
  Nvfp4Weight out_proj;  // [hidden, value_dim]
};

// tokens: the step's tokens, one a sequence (chunks.count == tokens, every chunk one token long).
struct GatedDeltaNetMixerBuffers {
  float* x;            // residual stream [tokens, hidden]
  const float* delta;  // the previous sublayer's output added to x first [tokens, hidden], or null
  void* h;             // bf16 normed rows [tokens, in_proj K] (the input projections' x)
  float *qkv, *z, *b, *a;  // [tokens, rows of each input projection]
  void* core_out;           // bf16 [tokens, value_dim] (the output projection's x)
  float* out;               // [tokens, hidden]
  int32_t* task_counts;     // kGatedDeltaNetMixerCounts ints, zero before the first launch
  // When set, each task's timeline (kernel_bench's breakdown of where a launch waits): kTaskTraceFields uint64 a
  // task, tasks in the order they are dealt (phase by phase): the block that ran it and %globaltimer (ns) at its
  // start, at the end of its wait for the phase before, and at its end.
  uint64_t* task_trace = nullptr;
};

inline constexpr int kGatedDeltaNetMixerPhases = 4;  // norm, input projections, heads, output projection
inline constexpr int kTaskTraceFields = 4;
// Tasks of each phase of a launch over `tokens` sequences (what task_trace holds).
struct GatedDeltaNetMixerTasks {
  int phase[kGatedDeltaNetMixerPhases];
  int total() const { return phase[0] + phase[1] + phase[2] + phase[3]; }
};
GatedDeltaNetMixerTasks gated_delta_net_mixer_tasks(const GatedDeltaNetMixerWeights& weights,
                                                    const GatedDeltaNetDims& dims, int64_t tokens,
                                                    const GemvTuning& in_tuning, const GemvTuning& out_tuning);

// Why the fused mixer cannot run this layer and step ("" when it can): tokens over
// kGatedDeltaNetMixerMaxTokens, head dims, conv kernel, tunings other than 8 warps of the asynchronous pipeline
// of depth 4 with two row tiles in and one out, or a hidden size the quad RMSNorm rows do not take.
std::string gated_delta_net_mixer_unsupported(const GatedDeltaNetDims& dims, int64_t hidden, int64_t tokens,
                                              const GemvTuning& in_tuning, const GemvTuning& out_tuning);

cudaError_t launch_gated_delta_net_mixer(const GatedDeltaNetMixerWeights& weights, const GatedDeltaNetDims& dims,
                                         const GatedDeltaNetState& state, const DeviceChunks& chunks, int64_t hidden,
                                         const GemvTuning& in_tuning, const GemvTuning& out_tuning,
                                         const GatedDeltaNetMixerBuffers& buffers, cudaStream_t stream);

// The unfused launches the fused mixer replaces, with the same tunings (its tests' and kernel_bench's reference):
// launch_add_rms_norm, gemv_nvfp4_multi_tuned, launch_gated_delta_net_layer (decode form), gemv_nvfp4_tuned.
// task_counts and task_trace are not used.
void launch_gated_delta_net_mixer_unfused(const GatedDeltaNetMixerWeights& weights, const GatedDeltaNetDims& dims,
                                          const GatedDeltaNetState& state, const DeviceChunks& chunks, int64_t hidden,
                                          const GemvTuning& in_tuning, const GemvTuning& out_tuning,
                                          const GatedDeltaNetMixerBuffers& buffers, cudaStream_t stream);

}  // namespace uberlm::cuda
