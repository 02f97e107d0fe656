#pragma once
// Tensor parallelism (Megatron style): each of N ranks holds a slice of every layer, so that a layer's
// output is the sum of the ranks' partial outputs (one all-reduce) and lm_head's logits the concatenation
// of the ranks' vocabulary slices (one all-gather).
//   column-parallel (rows of W sliced, outputs local): q/k/v_proj (attention heads), in_proj_qkv/z/b/a,
//     conv1d, A_log, dt_bias (Gated DeltaNet value heads with their key heads), gate/up_proj (MLP
//     intermediate features), lm_head (vocabulary rows);
//   row-parallel (columns of W sliced, partial sums): o_proj, out_proj, down_proj, followed by the all-reduce;
//   replicated: embeddings, RMS norms (also q/k norms and the gated norm, which act per head), the residual.
// Where a model has fewer KV heads (or DeltaNet key heads) than ranks, each is replicated on the ranks whose
// query (value) heads read it. The vocabulary is padded to a multiple of N with zero rows, whose logits the
// gather drops. Any other shape that does not divide by N is an Error naming the config field.
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace uberlm {

// [begin, end) of heads, features or rows.
struct ShardRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// What rank `rank` of `size` holds, in units of the whole model's heads, features and rows.
struct TensorParallelShard {
  int rank = 0, size = 1;
  ShardRange attention_heads, attention_kv_heads;  // empty when the model has no full attention
  ShardRange delta_net_key_heads, delta_net_value_heads;   // empty when the model has no Gated DeltaNet
  ShardRange mlp_features;                         // intermediate features
  ShardRange vocab_rows;                           // real vocabulary rows of lm_head
  int64_t vocab_shard_rows = 0;                    // ceil(V / N): every rank's lm_head rows, zero-padded
};

// Throws Error naming the config field when a head count, the intermediate size or a KV / key head count
// neither divides nor is divisible by `size`, or when size or rank is out of range.
TensorParallelShard plan_tensor_parallel_shard(const ModelConfig& config, int size, int rank);

// The config a rank's decoder runs: its head counts and intermediate size. vocab_size stays the whole
// vocabulary (token ids and the embedding are not sharded); the rank's lm_head has vocab_shard_rows rows.
ModelConfig shard_config(const ModelConfig& config, const TensorParallelShard& shard);

// A rank's weights: slices of the whole model's tensors copied into `storage` (only the rank's bytes of the
// checkpoint are read), replicated tensors left as views of the original. NVFP4 layers are sliced as stored:
// rows with their block scales, columns on 16-element block boundaries (an Error naming the layer otherwise).
// Row-parallel biases stay on rank 0 only, so the all-reduce adds them once.
struct ShardedModelWeights {
  ModelWeights weights;
  std::vector<std::vector<uint8_t>> storage;
};
ShardedModelWeights shard_model_weights(const ModelWeights& weights, const ModelConfig& config,
                                        const TensorParallelShard& shard);

// The collectives a rank's CPU decoder calls; every rank calls them in the same order.
class HostCollectives {
 public:
  virtual ~HostCollectives() = default;
  virtual int size() const = 0;
  // data [count] becomes the sum over the ranks, the same bits on every rank.
  virtual void all_reduce_sum(float* data, int64_t count) = 0;
  // gathered [size, count] = each rank's local [count], in rank order.
  virtual void all_gather(const float* local, int64_t count, float* gathered) = 0;
};

// The full logits [rows, vocab] from the ranks' gathered slices [size, rows, shard_rows] (all-gather order).
void assemble_vocab_shards(const float* gathered, int size, int64_t rows, int64_t shard_rows, int64_t vocab,
                           float* logits);

}  // namespace uberlm
