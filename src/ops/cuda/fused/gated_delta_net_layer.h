#pragma once
// The fused Gated DeltaNet layer op, after ops/cpu/gated_delta_net.h and cpu::gated_rms_norm: everything
// between a layer's input and output projections (causal conv1d, the delta rule with an fp32 state per
// sequence slot, the gated RMSNorm) in one kernel, in one of two forms: token by token (a chunk's tokens
// in order inside it), or chunked for prompts (gated_delta_net_layer_chunked.cu). Chunks run in parallel.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/host_device.h"
#include "ops/cuda/device_chunks.h"

namespace uberlm::cuda {

struct GatedDeltaNetDims {
  int num_k_heads;
  int num_v_heads;
  int k_head_dim;  // at most 256
  int v_head_dim;  // at most 512
  int conv_kernel;  // 2 to 8
  UBERLM_HOST_DEVICE int64_t key_dim() const { return static_cast<int64_t>(num_k_heads) * k_head_dim; }
  UBERLM_HOST_DEVICE int64_t value_dim() const { return static_cast<int64_t>(num_v_heads) * v_head_dim; }
  UBERLM_HOST_DEVICE int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

struct GatedDeltaNetParams {
  const float* conv1d;  // [conv_dim, conv_kernel]; [:, conv_kernel - 1] multiplies the newest input
  const float* a_log;   // [num_v_heads]
  const float* dt_bias;  // [num_v_heads]
  const float* norm;    // [v_head_dim], the gated norm's weight
  float norm_eps;
};

// Per sequence slot. conv: fp32 [slots, conv_kernel, conv_dim], a ring: entry p % conv_kernel holds the
// conv input of absolute position p, so a token at p reads p - (conv_kernel - 1) .. p - 1 and writes p
// without touching what another block of the same step reads. recurrent: fp32 [slots, num_v_heads,
// k_head_dim, v_head_dim]. ring_readers: int32 [slots, num_k_heads], zero between launches (the kernel
// counts in it and resets it).
struct GatedDeltaNetState {
  float* conv;
  float* recurrent;
  int32_t* ring_readers;
};

// qkv: fp32 [T, conv_dim] (q | k | v, head-major) before the conv; z: fp32 [T, value_dim]; a, b: fp32
// [T, num_v_heads]. Per token: x = silu(causal_conv1d(qkv)); per value head h (key head h / (Hv / Hk)):
// q = l2norm(q) / sqrt(dk), k = l2norm(k), beta = sigmoid(b), g = -exp(a_log) softplus(a + dt_bias);
// S = e^g S; delta = beta (v - S^T k); S += k delta^T; o = S^T q; out (bf16, tokens `out_stride` elements
// apart) = norm * o * rsqrt(mean(o^2) + norm_eps) * silu(z), the RMS over the head's v_head_dim values.
// A chunk with start 0 begins a new sequence, whose states are taken as zero (nothing is read).
// tokens: all chunks' tokens together (== chunks.count in a decode step, which gets its own blocking).
// Needs v_head_dim <= 512 (one thread-block cluster of at most 8 column slices per head).
// Two forms, chosen per chunk (gated_delta_net_chunk_runs_chunked): the recurrent rule token by token
// (fp32), and the chunked form (gated_delta_net_layer_chunked.cu: 64 tokens per triangular solve, tf32 tensor-core
// products), whose results differ from the recurrent form's by tf32 rounding
// (tests/gpu/fused_gated_delta_net_layer_test.cpp states the bound). lengths: the least and the greatest
// chunks.length, which tell the host which of the two kernels the step needs.
struct ChunkLengths {
  int64_t shortest;
  int64_t longest;
};
// The chunked form's fp32 intermediates between its two kernels: gated_delta_net_chunked_scratch_floats
// for the step's tokens (a step that runs only token by token may pass none).
struct GatedDeltaNetScratch {
  float* data;
  int64_t floats;
};
// Which form each chunk takes: by its length (gated_delta_net_chunk_runs_chunked; a mixed step's token-by-token
// chunks run in the prompt shape of 64-column slices over 16-token windows), or every chunk token by token in
// the decode step's shape (one block per value head, one token per window), so that a token's values are the
// same bits whether it was prefilled, in whatever chunk, or decoded (--deterministic).
enum class GatedDeltaNetForm { ByChunkLength, DecodeTokenByToken };
// Whether a launch of `tokens` tokens in `chunks` chunks runs in the decode step's shape (and so never chunked).
inline bool gated_delta_net_runs_decode_shape(int64_t tokens, int64_t chunks, GatedDeltaNetForm form) {
  return tokens == chunks || form == GatedDeltaNetForm::DecodeTokenByToken;
}
// A decode step (every chunk one token) of at least kManySequenceMinChunks sequences runs blocks of two threads
// a state column (256 threads a value head of 128 columns: two sequences at once on an SM), where fewer keep
// four (a shorter chain a thread, one sequence an SM); key head dims up to 128 and conv kernels up to 4. Never in
// the DecodeTokenByToken form, whose sums must not depend on the step's batch.
inline constexpr int64_t kManySequenceMinChunks = 4;
bool gated_delta_net_decode_runs_many_sequence_blocks(const GatedDeltaNetDims& dims, GatedDeltaNetForm form,
                                                      int64_t tokens, int64_t chunks);
cudaError_t launch_gated_delta_net_layer(const float* qkv, const float* z, const float* a, const float* b,
                                   const GatedDeltaNetParams& weights, const DeviceChunks& chunks, int64_t tokens,
                                   ChunkLengths lengths, GatedDeltaNetForm form,
                                   const GatedDeltaNetDims& dims, const GatedDeltaNetState& state,
                                   GatedDeltaNetScratch scratch, void* out, int64_t out_stride, cudaStream_t stream);

// The largest k_head_dim and v_head_dim of the chunked form (its q, k, v and state tiles in shared memory).
constexpr int kMaxChunkedDeltaRuleHeadDim = 128;
bool gated_delta_net_chunked_supports(const GatedDeltaNetDims& dims);
// Floats of GatedDeltaNetScratch the chunked form needs for a step of `tokens` tokens (0 where it cannot run):
// per token and value head, about four head-dim vectors and a 64-float row.
int64_t gated_delta_net_chunked_scratch_floats(const GatedDeltaNetDims& dims, int64_t tokens);

// The shortest chunk the chunked form takes. It spends a whole 64-token solve on every chunk, so shorter
// chunks (decode tokens batched with a prompt, a short rest of a prompt) run token by token, in the same
// step. Estimated from the H200's ~31 us per 64 tokens and head of the unsplit chunked kernel against ~1.2 us
// per token of the token-by-token one at 2048 tokens (bench/notes/prefill.md); the crossover is not yet
// measured, and the split form (a piece's prepare block alone ~45 us, its recurrence ~10 us) moves it.
constexpr int64_t kChunkedDeltaRuleMinTokens = 32;

// Whether a chunk of `length` tokens runs in the chunked form: not in a decode step (every chunk one token),
// head dims the chunked kernel holds, and at least kChunkedDeltaRuleMinTokens tokens.
bool gated_delta_net_chunk_runs_chunked(const GatedDeltaNetDims& dims, bool decode_step, int64_t length);

}  // namespace uberlm::cuda
