#pragma once
// The GPU decoder: the sublayers of CpuDecoder (model/decoder_cpu.cpp, after spec/qwen3_5.md) as free
// functions over the device model, caches and step buffers, so the two read side by side and a fused
// kernel can be checked against the sublayer functions it replaces. Each function queues its kernels on
// the decoder's stream; none synchronises. Per layer:
//   h = RMSNorm1(x)                      (the previous sublayer's output added to x in the same kernel)
//   sublayer_out = attention(h) or gated_delta_net(h)
//   h = RMSNorm2(x += sublayer_out)
//   sublayer_out = mlp(h)
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "ops/cuda/attention_prefill.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "runtime/cuda/device_model.h"
#include "runtime/cuda/linear.h"
#include "runtime/cuda/step_buffers.h"
#include "runtime/cuda/step_runner.h"

namespace uberlm {
class NcclCommunicator;
}

namespace uberlm::gpu {

// One forward's extent: its tokens, its chunks (StepBuffers::meta), its logits rows.
struct StepShape {
  int64_t tokens = 0;
  int64_t chunks = 0;
  int64_t shortest_chunk = 0;  // tokens of its shortest and longest chunks
  int64_t longest_chunk = 0;
  int64_t rows = 0;
  // Prefix saves between a run's tokens (SequenceChunk::prefix_save_after < num_tokens): each Gated DeltaNet
  // layer runs every chunk up to its save (meta.chunk_length_to_save), takes the saves, then runs the rest
  // (meta.resume_*, one chunk per save). Saves at a run's end are the backend's, after the step.
  struct MidRunSave {
    int slot;
    int snapshot;
  };
  std::vector<MidRunSave> mid_run_saves;
  cuda::ChunkLengths lengths_to_save{};  // of the chunks up to their saves
  cuda::ChunkLengths resumed_lengths{};  // of the parts after them
};

// Which kernels the decoder chose. Counted as the host queues them: eager steps count each call, a decode
// step's graph only when it is captured.
struct DecoderCounters {
  int64_t prefill_attention_calls = 0;      // layers whose prompt rows ran the tensor-core prefill kernel
  int64_t prefill_attention_wgmma_calls = 0;  // ... of them its Hopper form (prefill_attention_kernel)
  int64_t prefill_attention_fallbacks = 0;  // layers whose prompt rows ran the decode kernel instead (a
                                            // head_dim the prefill kernel lacks; logged once at load)
  int64_t chunked_delta_rule_calls = 0;     // Gated DeltaNet layers whose longest prompt chunk ran chunked
  int64_t chunked_delta_rule_fallbacks = 0;  // ... ran token by token for head dims over the chunked kernel's
                                             // (logged once at load); chunks shorter than
                                             // kChunkedDeltaRuleMinTokens run token by token by design
  int64_t fused_decode_layers = 0;     // layers of decode steps run by fused launches (fused_decoder_layer)
  int64_t fused_decode_fallbacks = 0;  // ... run unfused because the fused launches cannot run the model
                                       // (--decode-path auto; logged once at load); larger or mixed steps are
                                       // unfused by design
};

// Whether decode steps run fused launches (--decode-path, settled at load): no, yes, or asked for where they cannot
// run (each layer they would have run is then counted as a fallback).
enum class FusedDecode { Off, On, Unsupported };

// What the sublayer functions read and write.
struct GpuDecoder {
  const ModelConfig& config;
  const DeviceModel& model;
  const DeviceCaches& caches;
  const StepBuffers& buffers;
  const StepLimits& limits;
  LinearRunner& linears;
  OpProfiler& profiler;
  DecoderCounters& counters;
  // Tensor parallelism: o_proj, out_proj and down_proj outputs are all-reduced, lm_head's vocabulary
  // slices all-gathered. Null on one GPU.
  const NcclCommunicator* communicator;
  cudaStream_t stream;
  // `uberlm check`: when set, fp32 [layers, 2, T, D], the residual stream after each layer's mixer (0) and
  // MLP (1), copied as the step runs (graph replay included). Null in production.
  float* residual_snapshots = nullptr;
  // --deterministic: every row computes as a decode row does, whatever shares its step: attention by the
  // split kernel with a split count fixed at load, the delta rule token by token in the decode shape (the
  // linear layers' part is LinearRunner's). A token's values then do not depend on its batch, on how its
  // prompt was cut into steps, or on whether it was prefilled or decoded.
  bool deterministic = false;
  // The prefill attention kernel prompt steps take (chosen for the device at load).
  cuda::PrefillAttentionKernel prefill_attention_kernel = cuda::PrefillAttentionKernel::MmaSync;
  FusedDecode fused_decode = FusedDecode::Off;
};

// x [T, D] = embed_tokens[tokens].
void embed(const GpuDecoder& d, int64_t tokens);
// h [T, D] (bf16) = RMSNorm(x += delta) with `weight`; delta may be null.
void add_rms_norm(const GpuDecoder& d, const float* delta, const float* weight, int64_t tokens);
// sublayer_out [T, D] = o_proj(attention(q, k, v) * sigmoid(gate)); keys and values appended to the layer's
// KV pool at each token's position.
void attention(const GpuDecoder& d, int layer, const StepShape& step);
// sublayer_out [T, D] = out_proj(GatedRMSNorm(delta_rule(conv1d(in_proj_qkv(h))), z)); states updated.
void gated_delta_net(const GpuDecoder& d, int layer, const StepShape& step);
// A Gated DeltaNet layer's head shape as its kernels take it.
cuda::GatedDeltaNetDims delta_net_dims(const ModelConfig& c);
// Whether the fused launches were asked for (on, or unsupported) and this step is one they are for: a decode step of
// 1..8 sequences without prefix saves. Other steps (and empty ones) run unfused by design.
bool fused_decode_step(const GpuDecoder& d, const StepShape& step);
// A layer of a fused decode step as one launch (ops/cuda/fused/decode_phases.h): its first norm with x += pending,
// the mixer (Gated DeltaNet, or attention with its KV append), its second norm and the MLP. The launch writes the
// residual snapshots.
void fused_decoder_layer(const GpuDecoder& d, int layer, const StepShape& step, const float* pending);
// Why the fused launches cannot run this model ("" when they can), checked at load.
std::string fused_decode_unsupported(const GpuDecoder& d);
// sublayer_out [T, D] = down_proj(silu(gate_proj(h)) * up_proj(h)).
void mlp(const GpuDecoder& d, int layer, int64_t tokens);
// One decoder layer; `pending` is the previous layer's MLP output, not yet added to x (its add completes the
// previous layer's residual stream, snapshot there).
void decoder_layer(const GpuDecoder& d, int layer, const StepShape& step, const float* pending);
// logits [rows, V] = lm_head(RMSNorm(x[meta.logit_rows])) for `rows` rows.
void logits(const GpuDecoder& d, int64_t rows);
// The whole step: embedding, every layer, the residual stream's last add, then logits of step.rows rows.
void decoder_step(const GpuDecoder& d, const StepShape& step);

}  // namespace uberlm::gpu
