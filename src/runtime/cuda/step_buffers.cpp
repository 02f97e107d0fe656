#include "runtime/cuda/step_buffers.h"

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/fused/decode_phases.h"
#include "ops/cuda/gemv.h"
#include "runtime/backend.h"
#include "runtime/cuda/decoder.h"

namespace uberlm::gpu {

namespace {
int64_t padded_k(int64_t k) { return round_up(std::max<int64_t>(k, 1), cuda::kGemvKMultiple); }

// The sublayers' fp32 intermediates, each placed from the same scratch base; returns the bytes the largest
// needs. (Their bf16 linear-layer inputs have regions of their own: a row's K padding must stay zero, and
// another sublayer's fp32 values written over it would not be.)
int64_t layout_sublayer_scratch(uintptr_t base, const ModelConfig& c, int64_t T, StepBuffers& b) {
  const int64_t q_width = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  Arena attention(base), delta_net(base), mlp(base);
  b.attention.q_proj = attention.take<float>(T * c.q_proj_rows());
  b.attention.k = attention.take<float>(T * kv_width);
  b.attention.v = attention.take<float>(T * kv_width);
  b.attention.query = attention.take<float>(T * q_width);
  b.delta_net.qkv = delta_net.take<float>(T * c.delta_net_conv_dim());
  b.delta_net.z = delta_net.take<float>(T * c.delta_net_value_dim());
  b.delta_net.b = delta_net.take<float>(T * c.delta_net_num_value_heads);
  b.delta_net.a = delta_net.take<float>(T * c.delta_net_num_value_heads);
  b.delta_net.chunked_scratch_floats = cuda::gated_delta_net_chunked_scratch_floats(delta_net_dims(c), T);
  b.delta_net.chunked_scratch = delta_net.take<float>(b.delta_net.chunked_scratch_floats);
  b.mlp.gate = mlp.take<float>(T * c.intermediate_size);
  b.mlp.up = mlp.take<float>(T * c.intermediate_size);
  return std::max({attention.used(), delta_net.used(), mlp.used()});
}
}  // namespace

int64_t StepLimits::max_blocks_per_slot() const { return (max_context + kKvBlockSize - 1) / kKvBlockSize; }

int64_t StepMetadata::count(const StepLimits& limits) {
  return 12 * limits.max_tokens + limits.max_logit_rows + static_cast<int64_t>(limits.max_slots) * limits.max_blocks_per_slot();
}

StepMetadata StepMetadata::at(int32_t* base, const StepLimits& limits) {
  const int64_t T = limits.max_tokens;
  StepMetadata m;
  m.tokens = base;
  m.positions = m.tokens + T;
  m.slots = m.positions + T;
  m.chunk_first = m.slots + T;
  m.chunk_length = m.chunk_first + T;
  m.chunk_slot = m.chunk_length + T;
  m.chunk_start = m.chunk_slot + T;
  m.chunk_length_to_save = m.chunk_start + T;
  m.resume_first = m.chunk_length_to_save + T;
  m.resume_length = m.resume_first + T;
  m.resume_slot = m.resume_length + T;
  m.resume_start = m.resume_slot + T;
  m.logit_rows = m.resume_start + T;
  m.block_tables = m.logit_rows + limits.max_logit_rows;
  return m;
}

void layout_step_buffers(Arena& arena, const ModelConfig& c, const StepLimits& limits, int gathering_ranks,
                         int64_t lm_head_rows, StepBuffers& b) {
  const int64_t T = limits.max_tokens, R = limits.max_logit_rows, dim = c.hidden_size;
  b.x = arena.take<float>(T * dim);
  b.h = arena.take<uint16_t>(T * padded_k(dim));
  b.sublayer_out = arena.take<float>(T * dim);
  // One region for the three sublayers' fp32 intermediates: measured at base 0, then placed.
  uint8_t* scratch = arena.take<uint8_t>(layout_sublayer_scratch(0, c, T, b));
  layout_sublayer_scratch(reinterpret_cast<uintptr_t>(scratch), c, T, b);
  b.attention.o_proj_in = arena.take<uint16_t>(T * padded_k(static_cast<int64_t>(c.num_heads) * c.head_dim));
  b.delta_net.out_proj_in = arena.take<uint16_t>(T * padded_k(c.delta_net_value_dim()));
  b.mlp.down_proj_in = arena.take<uint16_t>(T * padded_k(c.intermediate_size));
  int64_t workspace = 1;
  for (int64_t t = 1; t <= T && c.num_kv_heads > 0; ++t) {
    const int splits = cuda::attention_splits(t, c.num_kv_heads, limits.max_context);
    workspace = std::max(workspace, cuda::attention_workspace_floats(t, c.num_heads, c.head_dim, splits));
  }
  b.attention_workspace = arena.take<float>(workspace);
  b.attention_workspace_floats = workspace;
  b.final_in = arena.take<uint16_t>(R * padded_k(dim));
  b.logits = arena.take<float>(R * c.vocab_size);
  if (gathering_ranks > 0) {
    b.shard_logits = arena.take<float>(R * lm_head_rows);
    b.gathered_logits = arena.take<float>(gathering_ranks * R * lm_head_rows);
  }
  b.argmax = arena.take<int32_t>(R);
  b.argmax_scratch = arena.take<cuda::ArgmaxScratch>(R);
  b.fused_mlp_in = arena.take<uint16_t>(cuda::kFusedDecodeMaxTokens * padded_k(dim));
  b.decode_task_counts = arena.take<int32_t>(cuda::kDecodePhaseCounts);
  b.meta = StepMetadata::at(arena.take<int32_t>(StepMetadata::count(limits)), limits);
}

int64_t kv_block_bytes(const ModelConfig& c) {
  const int64_t pools = 2 * static_cast<int64_t>(c.num_layers_of(LayerKind::FullAttention));
  return pools * kKvBlockSize * c.num_kv_heads * c.head_dim * static_cast<int64_t>(sizeof(uint16_t));
}

int64_t conv_state_floats(const ModelConfig& c) {
  return static_cast<int64_t>(c.delta_net_conv_kernel) * c.delta_net_conv_dim();
}

int64_t recurrent_state_floats(const ModelConfig& c) {
  return static_cast<int64_t>(c.delta_net_num_value_heads) * c.delta_net_key_head_dim * c.delta_net_value_head_dim;
}

void layout_caches(Arena& arena, const ModelConfig& c, int64_t num_kv_blocks, int max_slots, int prefix_snapshots,
                   DeviceCaches& caches) {
  const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const int64_t conv = conv_state_floats(c), recurrent = recurrent_state_floats(c);
  caches.num_kv_blocks = num_kv_blocks;
  caches.prefix_snapshots = prefix_snapshots;
  caches.layers.assign(c.num_layers, LayerCaches{});
  for (int i = 0; i < c.num_layers; ++i) {
    LayerCaches& layer = caches.layers[i];
    if (c.layer_kinds[i] == LayerKind::FullAttention) {
      layer.key_cache = arena.take<uint16_t>(num_kv_blocks * kKvBlockSize * kv_width);
      layer.value_cache = arena.take<uint16_t>(num_kv_blocks * kKvBlockSize * kv_width);
    } else {
      layer.conv_state = arena.take<float>(max_slots * conv);
      layer.recurrent_state = arena.take<float>(max_slots * recurrent);
      if (prefix_snapshots > 0) {
        layer.conv_snapshots = arena.take<float>(prefix_snapshots * conv);
        layer.recurrent_snapshots = arena.take<float>(prefix_snapshots * recurrent);
      }
    }
  }
  caches.conv_ring_readers = arena.take<int32_t>(static_cast<int64_t>(max_slots) * std::max(1, c.delta_net_num_key_heads));
}

}  // namespace uberlm::gpu
