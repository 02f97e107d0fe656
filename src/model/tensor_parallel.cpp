#include "model/tensor_parallel.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"

namespace uberlm {

namespace {

ShardRange even_split(int64_t count, int size, int rank) { return {count * rank / size, count * (rank + 1) / size}; }

void require_divisible(int64_t count, int size, const char* field) {
  if (count % size != 0) {
    fail("--tensor-parallel {}: {} = {} is not divisible by {}", size, field, count, size);
  }
}

// KV heads (or DeltaNet key heads) are divided when there are at least as many as ranks, else replicated.
void require_grouped(int64_t count, int size, const char* field) {
  if (count % size != 0 && size % count != 0) {
    fail("--tensor-parallel {}: {} = {} neither divides nor is divisible by {}, so its heads cannot be divided "
         "or replicated evenly",
         size, field, count, size);
  }
}

// The shared heads that query heads `heads` read, `group` query heads per shared head (GQA, and DeltaNet's
// value heads per key head).
ShardRange shared_heads_of(ShardRange heads, int64_t group) {
  return {heads.begin / group, (heads.end - 1) / group + 1};
}

// Copies slices of tensors into buffers owned by `storage`.
class Slicer {
 public:
  explicit Slicer(std::vector<std::vector<uint8_t>>& storage) : storage_(storage) {}

  // Rows `ranges` of the first dimension, concatenated, then zero rows up to `padded_rows` (0: none).
  TensorView rows(const TensorView& tensor, const std::vector<ShardRange>& ranges, int64_t padded_rows = 0) {
    const int64_t row_bytes = static_cast<int64_t>(tensor.nbytes()) / tensor.dim(0);
    int64_t count = 0;
    for (const ShardRange& range : ranges) count += range.size();
    const int64_t total = std::max(count, padded_rows);
    TensorView out = tensor;
    out.shape[0] = total;
    out.data = copy_rows(static_cast<const uint8_t*>(tensor.data), row_bytes, ranges, total);
    return out;
  }

  // Columns `columns` of a 2-D tensor.
  TensorView columns(const TensorView& tensor, ShardRange columns) {
    const int64_t element = static_cast<int64_t>(dtype_size(tensor.dtype));
    TensorView out = tensor;
    out.shape[1] = columns.size();
    out.data = copy_columns(static_cast<const uint8_t*>(tensor.data), tensor.dim(0), tensor.dim(1) * element,
                            columns.begin * element, columns.size() * element);
    return out;
  }

  LinearWeight linear_rows(const LinearWeight& layer, const std::vector<ShardRange>& ranges, int64_t padded_rows = 0) {
    LinearWeight out{layer.name, {}, std::nullopt, {}};
    if (layer.nvfp4) {
      const Nvfp4Weight& w = *layer.nvfp4;
      int64_t count = 0;
      for (const ShardRange& range : ranges) count += range.size();
      Nvfp4Weight sliced = w;
      sliced.rows = std::max(count, padded_rows);
      sliced.packed = copy_rows(w.packed, w.cols / 2, ranges, sliced.rows);
      sliced.scales = copy_rows(w.scales, w.cols / kNvfp4BlockSize, ranges, sliced.rows);
      out.nvfp4 = sliced;
    } else {
      out.weight = rows(layer.weight, ranges, padded_rows);
    }
    if (layer.bias.data) out.bias = rows(layer.bias, ranges, padded_rows);
    return out;
  }

  // Input columns `columns`; the bias (added after the all-reduce's sum) only when `keep_bias`.
  LinearWeight linear_columns(const LinearWeight& layer, ShardRange columns, bool keep_bias) {
    LinearWeight out{layer.name, {}, std::nullopt, {}};
    if (layer.nvfp4) {
      const Nvfp4Weight& w = *layer.nvfp4;
      if (columns.begin % kNvfp4BlockSize != 0 || columns.size() % kNvfp4BlockSize != 0) {
        fail("tensor parallel: NVFP4 layer {} would be split at input columns [{}, {}), not on its {}-element "
             "block boundaries",
             layer.name, columns.begin, columns.end, kNvfp4BlockSize);
      }
      Nvfp4Weight sliced = w;
      sliced.cols = columns.size();
      sliced.packed = copy_columns(w.packed, w.rows, w.cols / 2, columns.begin / 2, columns.size() / 2);
      sliced.scales = copy_columns(w.scales, w.rows, w.cols / kNvfp4BlockSize, columns.begin / kNvfp4BlockSize,
                                   columns.size() / kNvfp4BlockSize);
      out.nvfp4 = sliced;
    } else {
      out.weight = this->columns(layer.weight, columns);
    }
    if (keep_bias) out.bias = layer.bias;
    return out;
  }

 private:
  uint8_t* buffer(int64_t bytes) {
    storage_.emplace_back(static_cast<size_t>(bytes), uint8_t{0});
    return storage_.back().data();
  }

  const uint8_t* copy_rows(const uint8_t* source, int64_t row_bytes, const std::vector<ShardRange>& ranges,
                           int64_t total_rows) {
    uint8_t* out = buffer(total_rows * row_bytes);
    uint8_t* next = out;
    for (const ShardRange& range : ranges) {
      std::memcpy(next, source + range.begin * row_bytes, range.size() * row_bytes);
      next += range.size() * row_bytes;
    }
    return out;
  }

  const uint8_t* copy_columns(const uint8_t* source, int64_t rows, int64_t row_bytes, int64_t begin_byte,
                              int64_t width_bytes) {
    uint8_t* out = buffer(rows * width_bytes);
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * width_bytes, source + r * row_bytes + begin_byte, width_bytes);
    return out;
  }

  std::vector<std::vector<uint8_t>>& storage_;
};

}  // namespace

TensorParallelShard plan_tensor_parallel_shard(const ModelConfig& c, int size, int rank) {
  if (size < 1) fail("--tensor-parallel {}: expected at least 1", size);
  if (rank < 0 || rank >= size) fail("tensor parallel: rank {} outside 0..{}", rank, size - 1);
  TensorParallelShard shard;
  shard.rank = rank;
  shard.size = size;
  if (c.num_layers_of(LayerKind::FullAttention) > 0) {
    require_divisible(c.num_heads, size, "num_attention_heads");
    require_grouped(c.num_kv_heads, size, "num_key_value_heads");
    shard.attention_heads = even_split(c.num_heads, size, rank);
    shard.attention_kv_heads = shared_heads_of(shard.attention_heads, c.num_heads / c.num_kv_heads);
  }
  if (c.num_layers_of(LayerKind::GatedDeltaNet) > 0) {
    require_divisible(c.delta_net_num_value_heads, size, "linear_num_value_heads");
    require_grouped(c.delta_net_num_key_heads, size, "linear_num_key_heads");
    shard.delta_net_value_heads = even_split(c.delta_net_num_value_heads, size, rank);
    shard.delta_net_key_heads =
        shared_heads_of(shard.delta_net_value_heads, c.delta_net_num_value_heads / c.delta_net_num_key_heads);
  }
  require_divisible(c.intermediate_size, size, "intermediate_size");
  shard.mlp_features = even_split(c.intermediate_size, size, rank);
  shard.vocab_shard_rows = (c.vocab_size + size - 1) / size;
  shard.vocab_rows = {std::min<int64_t>(c.vocab_size, rank * shard.vocab_shard_rows),
                      std::min<int64_t>(c.vocab_size, (rank + 1) * shard.vocab_shard_rows)};
  return shard;
}

ModelConfig shard_config(const ModelConfig& config, const TensorParallelShard& shard) {
  ModelConfig local = config;
  if (shard.attention_heads.size() > 0) {
    local.num_heads = static_cast<int>(shard.attention_heads.size());
    local.num_kv_heads = static_cast<int>(shard.attention_kv_heads.size());
  }
  if (shard.delta_net_value_heads.size() > 0) {
    local.delta_net_num_value_heads = static_cast<int>(shard.delta_net_value_heads.size());
    local.delta_net_num_key_heads = static_cast<int>(shard.delta_net_key_heads.size());
  }
  local.intermediate_size = static_cast<int>(shard.mlp_features.size());
  return local;
}

ShardedModelWeights shard_model_weights(const ModelWeights& weights, const ModelConfig& c,
                                        const TensorParallelShard& shard) {
  ShardedModelWeights out;
  Slicer slice(out.storage);
  const bool first_rank = shard.rank == 0;
  ModelWeights& w = out.weights;
  w.embed_tokens = weights.embed_tokens;
  w.final_norm = weights.final_norm;
  w.lm_head = slice.linear_rows(weights.lm_head, {shard.vocab_rows}, shard.vocab_shard_rows);
  const int64_t hd = c.head_dim, dk = c.delta_net_key_head_dim, dv = c.delta_net_value_head_dim;
  const int64_t key_dim = c.delta_net_key_dim();
  const ShardRange heads = shard.attention_heads, kv = shard.attention_kv_heads;
  const ShardRange keys = shard.delta_net_key_heads, values = shard.delta_net_value_heads;
  const int64_t q_rows_per_head = hd * (c.attn_output_gate ? 2 : 1);
  const ShardRange q_rows{heads.begin * q_rows_per_head, heads.end * q_rows_per_head};
  const ShardRange kv_rows{kv.begin * hd, kv.end * hd};
  const ShardRange value_features{values.begin * dv, values.end * dv};
  // in_proj_qkv and conv1d channels: the rank's q heads, k heads, v heads.
  const std::vector<ShardRange> qkv_rows{{keys.begin * dk, keys.end * dk},
                                         {key_dim + keys.begin * dk, key_dim + keys.end * dk},
                                         {2 * key_dim + value_features.begin, 2 * key_dim + value_features.end}};
  for (const LayerWeights& layer : weights.layers) {
    LayerWeights local;
    local.kind = layer.kind;
    local.input_norm = layer.input_norm;
    local.post_attention_norm = layer.post_attention_norm;
    if (layer.kind == LayerKind::FullAttention) {
      const AttentionWeights& a = layer.attention;
      local.attention.q_proj = slice.linear_rows(a.q_proj, {q_rows});
      local.attention.k_proj = slice.linear_rows(a.k_proj, {kv_rows});
      local.attention.v_proj = slice.linear_rows(a.v_proj, {kv_rows});
      local.attention.o_proj = slice.linear_columns(a.o_proj, {heads.begin * hd, heads.end * hd}, first_rank);
      local.attention.q_norm = a.q_norm;
      local.attention.k_norm = a.k_norm;
    } else {
      const GatedDeltaNetWeights& d = layer.delta_net;
      local.delta_net.in_proj_qkv = slice.linear_rows(d.in_proj_qkv, qkv_rows);
      local.delta_net.in_proj_z = slice.linear_rows(d.in_proj_z, {value_features});
      local.delta_net.in_proj_b = slice.linear_rows(d.in_proj_b, {values});
      local.delta_net.in_proj_a = slice.linear_rows(d.in_proj_a, {values});
      local.delta_net.out_proj = slice.linear_columns(d.out_proj, value_features, first_rank);
      local.delta_net.conv1d = slice.rows(d.conv1d, qkv_rows);
      local.delta_net.dt_bias = slice.rows(d.dt_bias, {values});
      local.delta_net.a_log = slice.rows(d.a_log, {values});
      local.delta_net.norm = d.norm;
    }
    local.mlp.gate_proj = slice.linear_rows(layer.mlp.gate_proj, {shard.mlp_features});
    local.mlp.up_proj = slice.linear_rows(layer.mlp.up_proj, {shard.mlp_features});
    local.mlp.down_proj = slice.linear_columns(layer.mlp.down_proj, shard.mlp_features, first_rank);
    w.layers.push_back(std::move(local));
  }
  return out;
}

void assemble_vocab_shards(const float* gathered, int size, int64_t rows, int64_t shard_rows, int64_t vocab,
                           float* logits) {
  for (int rank = 0; rank < size; ++rank) {
    const int64_t begin = std::min<int64_t>(vocab, rank * shard_rows);
    const int64_t width = std::min<int64_t>(vocab, begin + shard_rows) - begin;
    for (int64_t row = 0; row < rows; ++row) {
      std::memcpy(logits + row * vocab + begin, gathered + (rank * rows + row) * shard_rows, width * sizeof(float));
    }
  }
}

}  // namespace uberlm
