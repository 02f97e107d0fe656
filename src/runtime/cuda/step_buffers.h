#pragma once
// What a forward reads and writes on the GPU besides the weights, planned once at load for the largest
// step (StepLimits) and placed in one runtime allocation:
//   DeviceCaches  the sequences' state: the paged KV pool of every full-attention layer (blocks handed out
//                 by the scheduler) and every Gated DeltaNet layer's conv and recurrent state per slot, and
//                 per prefix snapshot when prefix caching is on;
//   StepBuffers   one step's activations and metadata, rewritten by every forward.
// Activation rows that feed a linear layer are bf16, padded along K to kGemvKMultiple with zeros (the
// allocation is zeroed at load and no kernel writes a row's padding).
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "ops/cuda/sampling.h"
#include "runtime/cuda/arena.h"

namespace uberlm::gpu {

struct StepLimits {
  int64_t max_tokens = 0;      // T: tokens of one forward
  int64_t max_logit_rows = 0;  // R: logits rows computed at once
  int max_slots = 0;
  int64_t max_context = 0;     // tokens per sequence
  int64_t max_blocks_per_slot() const;
};

// Per-step metadata, int32 arrays in one region: the device copy and its pinned host mirror share this
// layout, so one copy per step moves it all.
struct StepMetadata {
  int32_t *tokens, *positions, *slots;                              // [T] per token
  int32_t *chunk_first, *chunk_length, *chunk_slot, *chunk_start;   // [T] per chunk (at most one per token)
  // Runs with a prefix save between their tokens (StepShape::mid_run_saves): per chunk its tokens up to the
  // save (its length when it has none); then the parts after the saves as chunks of their own.
  int32_t* chunk_length_to_save;                                       // [T]
  int32_t *resume_first, *resume_length, *resume_slot, *resume_start;  // [T]
  int32_t* logit_rows;                                              // [R] the token row of each logits row
  int32_t* block_tables;                                            // [slots, max_blocks_per_slot]

  static int64_t count(const StepLimits& limits);
  static StepMetadata at(int32_t* base, const StepLimits& limits);
};

// The sublayers' intermediate tensors. Their fp32 ones share one scratch region (a layer runs one mixer and
// then its MLP, and each reads only its own); the bf16 inputs of linear layers, whose K padding must stay
// zero, each have their own.
struct AttentionBuffers {
  float* q_proj;        // [T, q_proj_rows]: per head the query, then the gate when gated
  float* k;             // [T, KV * head_dim]
  float* v;             // [T, KV * head_dim]
  float* query;         // [T, H * head_dim], normalised and rotated
  uint16_t* o_proj_in;  // bf16 [T, H * head_dim padded]: gated attention output
};
struct DeltaNetBuffers {
  float* qkv;             // [T, conv_dim]
  float* z;               // [T, value_dim]
  float* b;               // [T, num_v_heads]
  float* a;               // [T, num_v_heads]
  float* chunked_scratch;  // the chunked delta rule's intermediates (gated_delta_net_chunked_scratch_floats)
  int64_t chunked_scratch_floats;
  uint16_t* out_proj_in;  // bf16 [T, value_dim padded]: the gated norm's output
};
struct MlpBuffers {
  void* gate;              // [T, I] (the unfused path only): fp32, or bf16 without a bias (gpu::mlp)
  void* up;                // [T, I]
  uint16_t* down_proj_in;  // bf16 [T, I padded]: silu(gate) * up
};

struct StepBuffers {
  float* x = nullptr;             // [T, D] residual stream
  uint16_t* h = nullptr;          // bf16 [T, D padded]: the normed input of the next linear layers
  float* sublayer_out = nullptr;  // [T, D]: a mixer's or the MLP's output, added to x by the next norm
  AttentionBuffers attention{};
  DeltaNetBuffers delta_net{};
  MlpBuffers mlp{};
  float* attention_workspace = nullptr;  // the split attention's partial sums
  int64_t attention_workspace_floats = 0;
  uint16_t* final_in = nullptr;   // bf16 [R, D padded]
  float* logits = nullptr;        // [R, V]
  // Tensor parallelism: this rank's lm_head slice [R, lm_head_rows], gathered from every rank into
  // [ranks, R, lm_head_rows] and laid out as logits.
  float* shard_logits = nullptr;
  float* gathered_logits = nullptr;
  int32_t* argmax = nullptr;                       // [R]
  cuda::ArgmaxScratch* argmax_scratch = nullptr;   // [R], zero between launches
  // Fused decode steps (decode_phases.h): the second norm's rows (bf16 [8, D padded]), and the task counts, zero
  // between launches.
  uint16_t* fused_mlp_in = nullptr;
  int32_t* decode_task_counts = nullptr;
  StepMetadata meta{};
};

struct LayerCaches {
  uint16_t *key_cache = nullptr, *value_cache = nullptr;  // full attention: bf16 [blocks, block_size, KV, head_dim]
  float* conv_state = nullptr;       // Gated DeltaNet: [slots, kernel, conv_dim], a ring by position
  float* recurrent_state = nullptr;  // Gated DeltaNet: [slots, Hv, dk, dv]
  // Gated DeltaNet, prefix caching (SequenceChunk::prefix_save_snapshot): one slot's two states per snapshot,
  // [snapshots, kernel, conv_dim] and [snapshots, Hv, dk, dv]; null without prefix caching.
  float* conv_snapshots = nullptr;
  float* recurrent_snapshots = nullptr;
};
struct DeviceCaches {
  std::vector<LayerCaches> layers;
  int32_t* conv_ring_readers = nullptr;  // [slots, Hk], zero between Gated DeltaNet launches (all layers share it)
  int64_t num_kv_blocks = 0;
  int prefix_snapshots = 0;
};

// Places the step buffers for `limits`. gathering_ranks: with a tensor-parallel communicator (even of one
// rank) its size, whose lm_head slices of lm_head_rows rows are gathered into the logits; else 0.
void layout_step_buffers(Arena& arena, const ModelConfig& config, const StepLimits& limits, int gathering_ranks,
                         int64_t lm_head_rows, StepBuffers& buffers);
// Floats of one slot's conv ring and of its recurrent state, in each Gated DeltaNet layer.
int64_t conv_state_floats(const ModelConfig& config);
int64_t recurrent_state_floats(const ModelConfig& config);
// Places the KV pool of num_kv_blocks blocks per full-attention layer, and per Gated DeltaNet layer the
// states of max_slots slots and prefix_snapshots snapshots of them.
void layout_caches(Arena& arena, const ModelConfig& config, int64_t num_kv_blocks, int max_slots, int prefix_snapshots,
                   DeviceCaches& caches);
// Bytes of one KV block in every full-attention layer's key and value pools.
int64_t kv_block_bytes(const ModelConfig& config);

}  // namespace uberlm::gpu
