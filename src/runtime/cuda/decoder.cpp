#include "runtime/cuda/decoder.h"

#include "core/error.h"
#include "model/layer_linears.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/attention_prefill.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/fused/decode_phases.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/kv_cache.h"
#include "ops/cuda/rms_norm.h"
#include "ops/cuda/fused/qk_norm_rope_kv_append.h"
#include "runtime/backend.h"
#include "runtime/cuda/cache_snapshot.h"
#include "runtime/nccl_communicator.h"

namespace uberlm::gpu {

namespace {

int64_t padded_k(int64_t k) { return round_up(k, cuda::kGemvKMultiple); }

// After a row-parallel linear layer (o_proj, out_proj, down_proj): the ranks' partial sums.
void reduce_partial_sums(const GpuDecoder& d, int64_t tokens) {
  if (d.communicator) d.communicator->all_reduce_sum(d.buffers.sublayer_out, tokens * d.config.hidden_size, d.stream);
}

// x, the residual stream, into snapshot `which` (0: after the mixer, 1: after the MLP) of `layer`.
void snapshot_residual(const GpuDecoder& d, int layer, int which, int64_t tokens) {
  if (!d.residual_snapshots) return;
  const int64_t size = tokens * d.config.hidden_size;
  CUDA_CHECK(cudaMemcpyAsync(d.residual_snapshots + (2 * static_cast<int64_t>(layer) + which) * size, d.buffers.x,
                             size * sizeof(float), cudaMemcpyDeviceToDevice, d.stream));
}

// Steps with prompt rows: the mixer's output projection and the MLP's weights are dequantised on a side stream
// while the mixer's core runs (LinearRunner::prefetch_dequantized).
void prefetch_sublayer_weights(const GpuDecoder& d, int layer, const DeviceLinear& mixer_out, const StepShape& step) {
  if (step.tokens == step.chunks) return;
  const DeviceMlp& mlp = d.model.layers[layer].mlp;
  d.linears.prefetch_dequantized({&mixer_out, &mlp.gate_proj, &mlp.up_proj, &mlp.down_proj}, step.tokens);
}

cuda::DeviceChunks device_chunks(const GpuDecoder& d, const StepShape& step) {
  const StepMetadata& meta = d.buffers.meta;
  return {meta.chunk_first, meta.chunk_length, meta.chunk_slot, meta.chunk_start, static_cast<int>(step.chunks)};
}

// Every chunk up to its mid-run prefix save, and the parts after the saves (StepShape::mid_run_saves).
cuda::DeviceChunks chunks_to_save(const GpuDecoder& d, const StepShape& step) {
  const StepMetadata& meta = d.buffers.meta;
  return {meta.chunk_first, meta.chunk_length_to_save, meta.chunk_slot, meta.chunk_start, static_cast<int>(step.chunks)};
}

cuda::DeviceChunks resumed_chunks(const GpuDecoder& d, const StepShape& step) {
  const StepMetadata& meta = d.buffers.meta;
  return {meta.resume_first, meta.resume_length, meta.resume_slot, meta.resume_start,
          static_cast<int>(step.mid_run_saves.size())};
}

cuda::PagedKvLayout kv_layout(const GpuDecoder& d) {
  return {kKvBlockSize, static_cast<int>(d.limits.max_blocks_per_slot()), d.config.num_kv_heads, d.config.head_dim};
}

cuda::AttentionPrepShape attention_prep_shape(const ModelConfig& c) {
  return {c.num_heads, c.num_kv_heads, c.head_dim,  c.rotary_dim,
          c.attn_output_gate, c.qk_norm, norm_weight_offset(c.norm_style), c.rms_norm_eps};
}

// Where a layer's prepared keys and the values go: each token's position in its slot's paged pools.
cuda::KvCacheWrite kv_cache_write(const GpuDecoder& d, const LayerCaches& cache) {
  const StepMetadata& meta = d.buffers.meta;
  return {d.buffers.attention.v, meta.slots, meta.block_tables, kv_layout(d), cache.key_cache, cache.value_cache};
}

// The attention's output, gated, into o_proj's input. The gate of head h follows its query in q_proj's row: head
// stride 2 * head_dim.
cuda::AttentionOutput attention_output(const GpuDecoder& d) {
  const ModelConfig& c = d.config;
  const AttentionBuffers& b = d.buffers.attention;
  const int64_t q_width = static_cast<int64_t>(c.num_heads) * c.head_dim;
  return {c.attn_output_gate ? b.q_proj + c.head_dim : nullptr, c.q_proj_rows(), 2 * static_cast<int64_t>(c.head_dim),
          b.o_proj_in, padded_k(q_width)};
}

}  // namespace

void embed(const GpuDecoder& d, int64_t tokens) {
  OpScope op(d.profiler, "embedding");
  CUDA_CHECK(cuda::launch_embedding(d.model.embed_tokens, d.buffers.meta.tokens, tokens, d.config.hidden_size,
                                    d.buffers.x, d.stream));
}

void add_rms_norm(const GpuDecoder& d, const float* delta, const float* weight, int64_t tokens) {
  OpScope op(d.profiler, "rms_norm");
  const ModelConfig& c = d.config;
  CUDA_CHECK(cuda::launch_add_rms_norm(d.buffers.x, delta, nullptr, tokens, c.hidden_size, weight,
                                       norm_weight_offset(c.norm_style), c.rms_norm_eps, d.buffers.h,
                                       padded_k(c.hidden_size), d.stream));
}

namespace {

// The split count of deterministic attention for every token: a lone decode token's (the workspace holds at
// least one token at it).
int deterministic_attention_splits(const ModelConfig& c, const StepLimits& limits) {
  return cuda::attention_splits(1, c.num_kv_heads, limits.max_context);
}

// Deterministic attention: every token through the split kernel with the split count of a lone decode token
// (a function of max_context only, so a token's ranges depend on its position alone), in pieces of as many
// tokens as the workspace holds at that count.
void attend_in_pieces(const GpuDecoder& d, const LayerCaches& cache, const StepShape& step,
                      const cuda::AttentionOutput& output) {
  const ModelConfig& c = d.config;
  const AttentionBuffers& b = d.buffers.attention;
  const StepMetadata& meta = d.buffers.meta;
  const int splits = deterministic_attention_splits(c, d.limits);
  const int64_t piece = d.buffers.attention_workspace_floats / cuda::attention_workspace_floats(1, c.num_heads,
                                                                                                c.head_dim, splits);
  if (piece < 1) fail("deterministic attention: the workspace holds no token at {} splits", splits);
  const int64_t q_width = static_cast<int64_t>(c.num_heads) * c.head_dim;
  for (int64_t first = 0; first < step.tokens; first += piece) {
    cuda::AttentionOutput out = output;
    if (out.gate) out.gate += first * out.gate_stride;
    out.out = static_cast<uint16_t*>(out.out) + first * out.out_stride;
    CUDA_CHECK(cuda::launch_attention_decode(b.query + first * q_width, meta.slots + first, meta.positions + first,
                                             std::min(piece, step.tokens - first), c.num_heads, meta.block_tables,
                                             kv_layout(d), cache.key_cache, cache.value_cache, splits,
                                             d.buffers.attention_workspace, out, d.stream));
  }
}

// The attention of every token over its sequence's cached keys and values, written gated into o_proj's
// input. Steps with prompt rows take the query-tiled tensor-core kernel; decode steps (one token per
// sequence) the split kernel, which fills the GPU from a few long sequences; in deterministic mode every step
// the split kernel (attend_in_pieces).
void attend(const GpuDecoder& d, const LayerCaches& cache, const StepShape& step) {
  const ModelConfig& c = d.config;
  const AttentionBuffers& b = d.buffers.attention;
  const StepMetadata& meta = d.buffers.meta;
  const int64_t T = step.tokens;
  const cuda::AttentionOutput output = attention_output(d);
  if (d.deterministic) {
    OpScope op(d.profiler, "attention");
    attend_in_pieces(d, cache, step, output);
    return;
  }
  if (step.tokens > step.chunks && cuda::attention_prefill_supports(c.head_dim)) {
    OpScope op(d.profiler, "attention_prefill");
    ++d.counters.prefill_attention_calls;
    if (d.prefill_attention_kernel == cuda::PrefillAttentionKernel::Wgmma) ++d.counters.prefill_attention_wgmma_calls;
    CUDA_CHECK(cuda::launch_attention_prefill(d.prefill_attention_kernel, b.query, T, device_chunks(d, step), c.num_heads, meta.block_tables, kv_layout(d),
                                              cache.key_cache, cache.value_cache, output, d.stream));
    return;
  }
  if (step.tokens > step.chunks) ++d.counters.prefill_attention_fallbacks;
  OpScope op(d.profiler, "attention");
  const int splits = cuda::attention_splits(T, c.num_kv_heads, d.limits.max_context);
  CUDA_CHECK(cuda::launch_attention_decode(b.query, meta.slots, meta.positions, T, c.num_heads, meta.block_tables,
                                           kv_layout(d), cache.key_cache, cache.value_cache, splits,
                                           d.buffers.attention_workspace, output, d.stream));
}

}  // namespace

void attention(const GpuDecoder& d, int layer, const StepShape& step) {
  const ModelConfig& c = d.config;
  const DeviceAttention& w = d.model.layers[layer].attention;
  const LayerCaches& cache = d.caches.layers[layer];
  const AttentionBuffers& b = d.buffers.attention;
  const StepMetadata& meta = d.buffers.meta;
  const int64_t T = step.tokens;
  {
    OpScope op(d.profiler, "attention_qkv_proj");
    d.linears.group({{&w.q_proj, b.q_proj}, {&w.k_proj, b.k}, {&w.v_proj, b.v}}, d.buffers.h, T);
  }
  {
    OpScope op(d.profiler, "qk_norm_rope_kv_append");
    CUDA_CHECK(cuda::launch_qk_norm_rope_kv_append(b.q_proj, b.k, meta.positions, T, attention_prep_shape(c),
                                                   d.model.inv_freq, w.q_norm, w.k_norm, b.query,
                                                   kv_cache_write(d, cache), d.stream));
  }
  prefetch_sublayer_weights(d, layer, w.o_proj, step);
  attend(d, cache, step);
  OpScope op(d.profiler, "attention_o_proj");
  d.linears.linear(w.o_proj, b.o_proj_in, T, d.buffers.sublayer_out);
  reduce_partial_sums(d, T);
}

cuda::GatedDeltaNetDims delta_net_dims(const ModelConfig& c) {
  return {c.delta_net_num_key_heads, c.delta_net_num_value_heads, c.delta_net_key_head_dim, c.delta_net_value_head_dim,
          c.delta_net_conv_kernel};
}

void gated_delta_net(const GpuDecoder& d, int layer, const StepShape& step) {
  const ModelConfig& c = d.config;
  const DeviceGatedDeltaNet& w = d.model.layers[layer].delta_net;
  const LayerCaches& cache = d.caches.layers[layer];
  const DeltaNetBuffers& b = d.buffers.delta_net;
  const int64_t T = step.tokens;
  {
    OpScope op(d.profiler, "delta_net_in_proj");
    d.linears.group({{&w.in_proj_qkv, b.qkv}, {&w.in_proj_z, b.z}, {&w.in_proj_b, b.b}, {&w.in_proj_a, b.a}},
                    d.buffers.h, T);
  }
  prefetch_sublayer_weights(d, layer, w.out_proj, step);
  {
    OpScope op(d.profiler, "gated_delta_net");
    const cuda::GatedDeltaNetDims dims = delta_net_dims(c);
    const cuda::GatedDeltaNetParams params{w.conv1d, w.a_log, w.dt_bias, w.norm, c.rms_norm_eps};
    const cuda::GatedDeltaNetState state{cache.conv_state, cache.recurrent_state, d.caches.conv_ring_readers};
    const bool decode = step.tokens == step.chunks;
    const cuda::GatedDeltaNetForm form =
        d.deterministic ? cuda::GatedDeltaNetForm::DecodeTokenByToken : cuda::GatedDeltaNetForm::ByChunkLength;
    if (form == cuda::GatedDeltaNetForm::ByChunkLength) {
      if (cuda::gated_delta_net_chunk_runs_chunked(dims, decode, step.longest_chunk)) {
        ++d.counters.chunked_delta_rule_calls;
      } else if (!decode && !cuda::gated_delta_net_chunked_supports(dims)) {
        ++d.counters.chunked_delta_rule_fallbacks;
      }
    }
    // Rows keep their places in the step (the chunked kernel's scratch is laid out by them), so every launch
    // is told the step's T.
    const auto launch = [&](const cuda::DeviceChunks& runs, cuda::ChunkLengths lengths) {
      CUDA_CHECK(cuda::launch_gated_delta_net_layer(b.qkv, b.z, b.a, b.b, params, runs, T, lengths, form, dims, state,
                                                    {b.chunked_scratch, b.chunked_scratch_floats}, b.out_proj_in,
                                                    padded_k(dims.value_dim()), d.stream));
    };
    if (step.mid_run_saves.empty()) {
      launch(device_chunks(d, step), {step.shortest_chunk, step.longest_chunk});
    } else {
      launch(chunks_to_save(d, step), step.lengths_to_save);
      for (const StepShape::MidRunSave& save : step.mid_run_saves) {
        save_prefix_layer_states(c, d.caches, layer, save.slot, save.snapshot, d.stream);
      }
      launch(resumed_chunks(d, step), step.resumed_lengths);
    }
  }
  OpScope op(d.profiler, "delta_net_out_proj");
  d.linears.linear(w.out_proj, b.out_proj_in, T, d.buffers.sublayer_out);
  reduce_partial_sums(d, T);
}

namespace {

// The fused launches' GEMV tasks (the shapes decode_phases.h compiles: the H200 table's winners at 1..8 tokens for
// the 27B's input projections, w8_d4_r2_k4_async, and output projection, w8_d4_r1_k8_async): row tiles a warp
// and the warps that split K.
constexpr int kFusedWideRowTiles = 2, kFusedWideSplit = 4, kFusedNarrowRowTiles = 1, kFusedNarrowSplit = 8;

// Where the residual stream after layer `layer`'s mixer (0) or MLP (1) goes for `uberlm check` (null when off).
float* residual_snapshot(const GpuDecoder& d, int layer, int which, int64_t tokens) {
  if (!d.residual_snapshots || layer < 0) return nullptr;
  return d.residual_snapshots + (2 * static_cast<int64_t>(layer) + which) * tokens * d.config.hidden_size;
}

// A layer's first norm (x += pending) as a phase, with the snapshot of the layer before's output.
void add_input_norm_phase(const GpuDecoder& d, int layer, const float* pending, int64_t tokens,
                          cuda::DecodePhases& phases) {
  const ModelConfig& c = d.config;
  phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {
      d.buffers.x, pending, d.model.layers[layer].input_norm, norm_weight_offset(c.norm_style), c.rms_norm_eps,
      c.hidden_size, d.buffers.h, padded_k(c.hidden_size),
      pending ? residual_snapshot(d, layer - 1, 1, tokens) : nullptr};
}

// A Gated DeltaNet layer's mixer as phases.
void add_delta_net_mixer_phases(const GpuDecoder& d, int layer, cuda::DecodePhases& phases) {
  const ModelConfig& c = d.config;
  const DeviceGatedDeltaNet& net = d.model.layers[layer].delta_net;
  const DeltaNetBuffers& b = d.buffers.delta_net;
  const LayerCaches& cache = d.caches.layers[layer];
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {net.in_proj_qkv.nvfp4_view(), net.in_proj_z.nvfp4_view(), net.in_proj_b.nvfp4_view(), net.in_proj_a.nvfp4_view()},
      {b.qkv, b.z, b.b, b.a}, 4, d.buffers.h, kFusedWideRowTiles, kFusedWideSplit, nullptr, 0};
  phases.add(cuda::DecodePhaseKind::DeltaNetHeads).delta_net = {
      b.qkv, b.z, b.a, b.b, {net.conv1d, net.a_log, net.dt_bias, net.norm, c.rms_norm_eps}, delta_net_dims(c),
      {cache.conv_state, cache.recurrent_state, d.caches.conv_ring_readers}, b.out_proj_in,
      padded_k(c.delta_net_value_dim())};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {net.out_proj.nvfp4_view()}, {d.buffers.sublayer_out}, 1, b.out_proj_in, kFusedNarrowRowTiles, kFusedNarrowSplit,
      nullptr, 0};
}

// An attention layer's mixer as phases, as attention() launches it for a decode step.
void add_attention_mixer_phases(const GpuDecoder& d, int layer, int64_t tokens, cuda::DecodePhases& phases) {
  const ModelConfig& c = d.config;
  const DeviceAttention& att = d.model.layers[layer].attention;
  const AttentionBuffers& b = d.buffers.attention;
  const StepMetadata& meta = d.buffers.meta;
  const LayerCaches& cache = d.caches.layers[layer];
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {att.q_proj.nvfp4_view(), att.k_proj.nvfp4_view(), att.v_proj.nvfp4_view()}, {b.q_proj, b.k, b.v}, 3,
      d.buffers.h, kFusedWideRowTiles, kFusedWideSplit, nullptr, 0};
  phases.add(cuda::DecodePhaseKind::AttentionPrep).attention_prep = {
      b.q_proj, b.k, meta.positions, attention_prep_shape(c), d.model.inv_freq, att.q_norm, att.k_norm, b.query,
      kv_cache_write(d, cache)};
  phases.add(cuda::DecodePhaseKind::Attention).attention = {
      b.query, meta.slots, meta.positions, c.num_heads, meta.block_tables, kv_layout(d), cache.key_cache,
      cache.value_cache, cuda::attention_splits(tokens, c.num_kv_heads, d.limits.max_context),
      d.buffers.attention_workspace, attention_output(d)};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {att.o_proj.nvfp4_view()}, {d.buffers.sublayer_out}, 1, b.o_proj_in, kFusedNarrowRowTiles, kFusedNarrowSplit,
      nullptr, 0};
}

// A layer's second norm (x += its mixer's output) and MLP as phases. The norm writes its own rows (fused_mlp_in):
// the input projections' activations (h) may not be read again after a phase rewrote them (decode_phases.h).
void add_mlp_phases(const GpuDecoder& d, int layer, int64_t tokens, cuda::DecodePhases& phases) {
  const ModelConfig& c = d.config;
  const DeviceLayer& w = d.model.layers[layer];
  const MlpBuffers& b = d.buffers.mlp;
  phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {
      d.buffers.x, d.buffers.sublayer_out, w.post_attention_norm, norm_weight_offset(c.norm_style), c.rms_norm_eps,
      c.hidden_size, d.buffers.fused_mlp_in, padded_k(c.hidden_size), residual_snapshot(d, layer, 0, tokens)};
  phases.add(cuda::DecodePhaseKind::LinearSwiglu).linear = {
      {w.mlp.gate_proj.nvfp4_view(), w.mlp.up_proj.nvfp4_view()}, {}, 2, d.buffers.fused_mlp_in, kFusedWideRowTiles,
      kFusedWideSplit, b.down_proj_in, padded_k(c.intermediate_size)};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {w.mlp.down_proj.nvfp4_view()}, {d.buffers.sublayer_out}, 1, b.down_proj_in, kFusedNarrowRowTiles,
      kFusedNarrowSplit, nullptr, 0};
}

// Layer `layer` of a fused decode step as the phases of one launch.
cuda::DecodePhases fused_layer_phases(const GpuDecoder& d, int layer, const float* pending, int64_t tokens) {
  cuda::DecodePhases phases;
  add_input_norm_phase(d, layer, pending, tokens, phases);
  if (d.model.layers[layer].kind == LayerKind::GatedDeltaNet) add_delta_net_mixer_phases(d, layer, phases);
  else add_attention_mixer_phases(d, layer, tokens, phases);
  add_mlp_phases(d, layer, tokens, phases);
  return phases;
}

}  // namespace

std::string fused_decode_unsupported(const GpuDecoder& d) {
  if (d.deterministic) return "a run without --deterministic (their sums are not the batch-invariant tunings')";
  if (d.communicator) return "one GPU (no tensor parallelism: the output projections are all-reduced)";
  for (size_t i = 0; i < d.model.layers.size(); ++i) {
    const DeviceLayer& w = d.model.layers[i];
    for (const LinearSpec& spec : LayerLinearSpecs(d.config, w.kind)) {
      const DeviceLinear& linear = linear_of(w, spec.role);
      if (!linear.nvfp4 || linear.bias) {
        return fmt::format("NVFP4 layers without bias ({} is {})", linear.name,
                           linear.nvfp4 ? "NVFP4 with a bias" : "bf16");
      }
    }
    const std::string why = cuda::decode_phases_unsupported(fused_layer_phases(d, static_cast<int>(i), d.buffers.x, 1), 1);
    if (!why.empty()) return fmt::format("{} (layer {})", why, i);
  }
  return "";
}

bool fused_decode_step(const GpuDecoder& d, const StepShape& step) {
  return d.fused_decode != FusedDecode::Off && step.tokens > 0 && step.tokens == step.chunks &&
         step.tokens <= cuda::kFusedDecodeMaxTokens && step.mid_run_saves.empty();
}

void fused_decoder_layer(const GpuDecoder& d, int layer, const StepShape& step, const float* pending) {
  const DeviceLayer& w = d.model.layers[layer];
  const int64_t T = step.tokens;
  OpScope op(d.profiler, w.kind == LayerKind::GatedDeltaNet ? "fused_delta_net_layer" : "fused_attention_layer");
  ++d.counters.fused_decode_layers;
  CUDA_CHECK(cuda::launch_decode_phases(fused_layer_phases(d, layer, pending, T), device_chunks(d, step),
                                        d.buffers.decode_task_counts, nullptr, cuda::DecodePhasesLaunch::Cooperative,
                                        d.stream));
}

// gate/up with SwiGLU in the GEMV's epilogue where the pair allows it (LinearRunner::fuses_swiglu), with
// the bits of the fp32 projections and launch_swiglu. Otherwise (prompt steps) the two products and then
// launch_swiglu, the products rounded to bf16 unless a bias is added: at 2048 tokens their fp32 outputs are
// 285 MB a layer written and read again, and transformers rounds them to bf16 too.
void mlp(const GpuDecoder& d, int layer, int64_t tokens) {
  const DeviceMlp& w = d.model.layers[layer].mlp;
  const MlpBuffers& b = d.buffers.mlp;
  const int64_t inter = d.config.intermediate_size;
  if (d.linears.fuses_swiglu(w.gate_proj, w.up_proj, tokens)) {
    OpScope op(d.profiler, "mlp_gate_up_swiglu");
    d.linears.gate_up_swiglu(w.gate_proj, w.up_proj, d.buffers.h, tokens, b.down_proj_in, padded_k(inter));
  } else {
    const DType products = w.gate_proj.bias || w.up_proj.bias ? DType::F32 : DType::BF16;
    {
      OpScope op(d.profiler, "mlp_gate_up_proj");
      d.linears.group({{&w.gate_proj, b.gate}, {&w.up_proj, b.up}}, d.buffers.h, tokens, products);
    }
    OpScope op(d.profiler, "swiglu");
    CUDA_CHECK(cuda::launch_swiglu(b.gate, b.up, products, tokens, inter, b.down_proj_in, padded_k(inter), d.stream));
  }
  OpScope op(d.profiler, "mlp_down_proj");
  d.linears.linear(w.down_proj, b.down_proj_in, tokens, d.buffers.sublayer_out);
  reduce_partial_sums(d, tokens);
}

void decoder_layer(const GpuDecoder& d, int layer, const StepShape& step, const float* pending) {
  if (fused_decode_step(d, step)) {
    if (d.fused_decode == FusedDecode::On) {
      fused_decoder_layer(d, layer, step, pending);
      return;
    }
    ++d.counters.fused_decode_fallbacks;
  }
  const DeviceLayer& w = d.model.layers[layer];
  add_rms_norm(d, pending, w.input_norm, step.tokens);
  if (pending) snapshot_residual(d, layer - 1, 1, step.tokens);
  if (w.kind == LayerKind::FullAttention) attention(d, layer, step);
  else gated_delta_net(d, layer, step);
  add_rms_norm(d, d.buffers.sublayer_out, w.post_attention_norm, step.tokens);
  snapshot_residual(d, layer, 0, step.tokens);
  mlp(d, layer, step.tokens);
}

void logits(const GpuDecoder& d, int64_t rows) {
  const ModelConfig& c = d.config;
  const StepBuffers& b = d.buffers;
  {
    OpScope op(d.profiler, "final_norm");
    CUDA_CHECK(cuda::launch_add_rms_norm(b.x, nullptr, b.meta.logit_rows, rows, c.hidden_size, d.model.final_norm,
                                         norm_weight_offset(c.norm_style), c.rms_norm_eps, b.final_in,
                                         padded_k(c.hidden_size), d.stream));
  }
  OpScope op(d.profiler, "lm_head");
  if (!d.communicator) {
    d.linears.linear(d.model.lm_head, b.final_in, rows, b.logits);
    return;
  }
  const int64_t slice = d.model.lm_head.out;
  d.linears.linear(d.model.lm_head, b.final_in, rows, b.shard_logits);
  const NcclCommunicator& comm = *d.communicator;
  comm.all_gather(b.shard_logits, b.gathered_logits, rows * slice, d.stream);
  // Rank r's [rows, slice] block holds vocabulary columns r * slice.. (the last one's padding dropped).
  const int64_t vocab = c.vocab_size;
  for (int r = 0; r < comm.size(); ++r) {
    const int64_t begin = r * slice;
    const int64_t width = std::min(vocab, begin + slice) - begin;
    if (width <= 0 || rows == 0) continue;
    CUDA_CHECK(cudaMemcpy2DAsync(b.logits + begin, vocab * sizeof(float), b.gathered_logits + r * rows * slice,
                                 slice * sizeof(float), width * sizeof(float), rows, cudaMemcpyDeviceToDevice,
                                 d.stream));
  }
}

void decoder_step(const GpuDecoder& d, const StepShape& step) {
  embed(d, step.tokens);
  const float* pending = nullptr;
  for (int layer = 0; layer < d.config.num_layers; ++layer) {
    decoder_layer(d, layer, step, pending);
    pending = d.buffers.sublayer_out;
  }
  if (pending) {
    OpScope op(d.profiler, "residual_add");
    CUDA_CHECK(cuda::launch_add_inplace(d.buffers.x, pending, step.tokens * d.config.hidden_size, d.stream));
    snapshot_residual(d, d.config.num_layers - 1, 1, step.tokens);
  }
  if (step.rows > 0) logits(d, step.rows);
}

}  // namespace uberlm::gpu
