// Tensor-parallel shards (model/tensor_parallel.h) against the whole model on the CPU: each sharded
// sublayer's partial outputs, summed as the all-reduce sums them, equal the unsharded sublayer; lm_head's
// vocabulary slices, concatenated, equal its logits bit for bit; and whole-model logits with TP = 2 and 4
// (CpuTensorParallelBackend: rank threads, in-process all-reduce) equal TP = 1.
//
// Tolerance: fp32 throughout; a row-parallel layer's sum runs over the ranks' partial dot products instead
// of one dot product, so the results differ by rounding only: max|diff| / max|ref| <= 2e-6 per sublayer
// and 1e-5 for logits after every layer of the model (measured: at most 4.4e-7 and 1.2e-6).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "batch_util.h"
#include "core/nvfp4.h"
#include "expect_error.h"
#include "model/decoder_cpu.h"
#include "model/model.h"
#include "model/quantize.h"
#include "model/tensor_parallel.h"
#include "ops/cpu/linear.h"
#include "ops/cpu/linear_nvfp4.h"
#include "oracle_reference.h"
#include "runtime/cpu_backend.h"
#include "runtime/cpu_tensor_parallel_backend.h"

namespace uberlm {
namespace {

constexpr double kSublayerTolerance = 2e-6;
constexpr double kLogitsTolerance = 1e-5;
// A vocabulary slice computes the same dot products; the CPU linear dots rows four at a time and the
// remainder one by one, and which rows fall in the remainder moves with the slice, so the compiler's FMA
// contraction may round those differently (one fp32 rounding).
constexpr double kRowSliceTolerance = 1e-6;

std::vector<float> random_values(int64_t n, uint32_t seed, float bound = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-bound, bound);
  std::vector<float> values(n);
  for (float& v : values) v = dist(rng);
  return values;
}

std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(UBERLM_FIXTURE_DIR) / "models" / name;
}

std::filesystem::path default_model() { return std::filesystem::path(UBERLM_SOURCE_DIR) / "models" / "default"; }

// A Qwen3.5 hybrid whose shapes all divide by 4, with KV heads and DeltaNet key heads fewer than 4
// (replicated at TP = 4), q/k/v and o biases (row-parallel bias on rank 0 only), and a vocabulary of 101
// (lm_head padded). Every linear layer but lm_head is NVFP4 when `nvfp4`.
std::unique_ptr<Model> synthetic_hybrid(bool nvfp4, int head_dim = 16) {
  auto model = std::make_unique<Model>();
  ModelConfig& c = model->config;
  c.model_type = "qwen3_5_text";
  c.hidden_size = 64;
  c.num_layers = 2;
  c.intermediate_size = 128;
  c.vocab_size = 101;
  c.norm_style = NormStyle::OnePlusWeight;
  c.layer_kinds = {LayerKind::GatedDeltaNet, LayerKind::FullAttention};
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = head_dim;
  c.rotary_dim = head_dim / 2;
  c.qk_norm = true;
  c.attn_output_gate = true;
  c.qkv_bias = true;
  c.o_bias = true;
  c.max_position_embeddings = 4096;
  c.delta_net_num_key_heads = 2;
  c.delta_net_num_value_heads = 8;
  c.delta_net_key_head_dim = 16;
  c.delta_net_value_head_dim = 16;
  c.delta_net_conv_kernel = 4;
  uint32_t seed = 1;
  auto tensor = [&](std::vector<int64_t> shape, float bound, float offset = 0.0f) {
    TensorView view{DType::F32, shape, nullptr};
    std::vector<float> values = random_values(view.numel(), ++seed, bound);
    for (float& v : values) v += offset;
    model->owned_tensors.push_back(std::move(values));
    view.data = model->owned_tensors.back().data();
    return view;
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias, bool quantise) {
    LinearWeight layer{name, {}, std::nullopt, {}};
    const float bound = std::sqrt(3.0f / static_cast<float>(in));
    if (quantise) {
      const std::vector<float> values = random_values(out * in, ++seed, bound);
      model->owned_nvfp4.push_back(quantize_nvfp4(values.data(), out, in, name));
      layer.nvfp4 = model->owned_nvfp4.back().view();
    } else {
      layer.weight = tensor({out, in}, bound);
    }
    if (bias) layer.bias = tensor({out}, 0.1f);
    return layer;
  };
  const int64_t dim = c.hidden_size;
  ModelWeights& w = model->weights;
  w.embed_tokens = tensor({c.vocab_size, dim}, 1.0f);
  w.final_norm = tensor({dim}, 0.1f);
  w.lm_head = linear("lm_head", c.vocab_size, dim, false, false);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".";
    LayerWeights layer;
    layer.kind = c.layer_kinds[i];
    layer.input_norm = tensor({dim}, 0.1f);
    layer.post_attention_norm = tensor({dim}, 0.1f);
    if (layer.kind == LayerKind::FullAttention) {
      const int64_t kv_rows = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
      layer.attention.q_proj = linear(prefix + "q_proj", c.q_proj_rows(), dim, true, nvfp4);
      layer.attention.k_proj = linear(prefix + "k_proj", kv_rows, dim, true, nvfp4);
      layer.attention.v_proj = linear(prefix + "v_proj", kv_rows, dim, true, nvfp4);
      layer.attention.o_proj = linear(prefix + "o_proj", dim, static_cast<int64_t>(c.num_heads) * c.head_dim, true, nvfp4);
      layer.attention.q_norm = tensor({c.head_dim}, 0.1f);
      layer.attention.k_norm = tensor({c.head_dim}, 0.1f);
    } else {
      GatedDeltaNetWeights& d = layer.delta_net;
      d.in_proj_qkv = linear(prefix + "in_proj_qkv", c.delta_net_conv_dim(), dim, false, nvfp4);
      d.in_proj_z = linear(prefix + "in_proj_z", c.delta_net_value_dim(), dim, false, nvfp4);
      d.in_proj_b = linear(prefix + "in_proj_b", c.delta_net_num_value_heads, dim, false, nvfp4);
      d.in_proj_a = linear(prefix + "in_proj_a", c.delta_net_num_value_heads, dim, false, nvfp4);
      d.out_proj = linear(prefix + "out_proj", dim, c.delta_net_value_dim(), false, nvfp4);
      d.conv1d = tensor({c.delta_net_conv_dim(), 1, c.delta_net_conv_kernel}, 0.5f);
      d.dt_bias = tensor({c.delta_net_num_value_heads}, 1.0f);
      d.a_log = tensor({c.delta_net_num_value_heads}, 0.5f, -0.5f);
      d.norm = tensor({c.delta_net_value_head_dim}, 0.1f, 1.0f);
    }
    layer.mlp.gate_proj = linear(prefix + "gate_proj", c.intermediate_size, dim, false, nvfp4);
    layer.mlp.up_proj = linear(prefix + "up_proj", c.intermediate_size, dim, false, nvfp4);
    layer.mlp.down_proj = linear(prefix + "down_proj", dim, c.intermediate_size, false, nvfp4);
    w.layers.push_back(std::move(layer));
  }
  return model;
}

// The models the tests shard, by name.
std::unique_ptr<Model> load_named(const std::string& name) {
  if (name == "synthetic") return synthetic_hybrid(false);
  if (name == "synthetic_nvfp4") return synthetic_hybrid(true);
  if (name == "default") return Model::load(default_model());
  if (name == "default_nvfp4") {
    auto model = Model::load(default_model());
    quantize_model_at_load(*model);
    return model;
  }
  return Model::load(fixture(name));
}

std::vector<float> apply(const LinearWeight& layer, const std::vector<float>& x, int64_t rows) {
  std::vector<float> y(rows * layer.out_features());
  if (layer.nvfp4) {
    cpu::linear_nvfp4(x.data(), rows, *layer.nvfp4, y.data());
  } else {
    cpu::linear(x.data(), rows, layer.weight, layer.bias, y.data());
  }
  return y;
}

struct RankModel {
  ModelConfig config;
  ShardedModelWeights weights;
  std::unique_ptr<CpuDecoder> decoder;  // no collectives: its sublayers return partial sums
  std::vector<CpuSequenceCache> caches;
};

std::vector<RankModel> shard_ranks(const Model& model, int size) {
  std::vector<RankModel> ranks(size);
  for (int r = 0; r < size; ++r) {
    const TensorParallelShard shard = plan_tensor_parallel_shard(model.config, size, r);
    ranks[r].config = shard_config(model.config, shard);
    ranks[r].weights = shard_model_weights(model.weights, model.config, shard);
  }
  for (RankModel& rank : ranks) {  // after the vector stopped moving: decoders keep references
    rank.decoder = std::make_unique<CpuDecoder>(rank.config, rank.weights.weights);
    for (int slot = 0; slot < 2; ++slot) rank.caches.push_back(rank.decoder->new_cache());
  }
  return ranks;
}

// Runs of slots 0 and 1 continuing their sequences at first_start and second_start.
ForwardBatch two_sequences(int64_t first_tokens, int64_t second_tokens, int64_t first_start = 0,
                           int64_t second_start = 0) {
  ForwardBatch batch;
  batch.chunks = {chunk_at(0, first_start, first_tokens), chunk_at(1, second_start, second_tokens)};
  batch.tokens.assign(first_tokens + second_tokens, 1);
  return batch;
}

struct ShardCase {
  std::string model;
  int size;
};

void PrintTo(const ShardCase& param, std::ostream* out) { *out << param.model << " at TP " << param.size; }

std::string case_name(const testing::TestParamInfo<ShardCase>& info) {
  return info.param.model + "_tp" + std::to_string(info.param.size);
}

class ShardedLayers : public testing::TestWithParam<ShardCase> {};

// Every layer's mixer and MLP on random normed inputs, over a prefill step (5 and 3 tokens of two
// sequences) and a decode step that reads the caches the prefill left: the ranks' partial sums against the
// whole layer.
TEST_P(ShardedLayers, PartialSumsEqualTheWholeLayer) {
  const auto model = load_named(GetParam().model);
  const ModelConfig& c = model->config;
  CpuDecoder whole(c, model->weights);
  std::vector<CpuSequenceCache> whole_caches{whole.new_cache(), whole.new_cache()};
  std::vector<RankModel> ranks = shard_ranks(*model, GetParam().size);
  uint32_t seed = 100;
  for (const ForwardBatch& batch : {two_sequences(5, 3), two_sequences(1, 1, 5, 3)}) {
    const int64_t tokens = static_cast<int64_t>(batch.tokens.size()), dim = c.hidden_size;
    for (int layer = 0; layer < c.num_layers; ++layer) {
      const std::vector<float> h = random_values(tokens * dim, ++seed);
      for (const bool mlp : {false, true}) {
        std::vector<float> expected(tokens * dim, NAN), sum(tokens * dim, 0.0f), partial(tokens * dim);
        if (mlp) whole.mlp(layer, h.data(), tokens, expected.data());
        else whole.mixer(layer, h.data(), batch, whole_caches, expected.data());
        for (RankModel& rank : ranks) {
          std::fill(partial.begin(), partial.end(), NAN);
          if (mlp) rank.decoder->mlp(layer, h.data(), tokens, partial.data());
          else rank.decoder->mixer(layer, h.data(), batch, rank.caches, partial.data());
          for (int64_t i = 0; i < tokens * dim; ++i) sum[i] += partial[i];
        }
        const double error = max_relative_error(sum.data(), expected.data(), static_cast<int>(sum.size()));
        EXPECT_LE(error, kSublayerTolerance) << "layer " << layer << (mlp ? " mlp" : " mixer") << " over " << tokens
                                             << " tokens";
      }
    }
    // The caches now hold the batch's tokens (forward advances the lengths after the last layer).
    for (size_t s = 0; s < batch.chunks.size(); ++s) {
      whole_caches[s].length += batch.chunks[s].num_tokens;
      for (RankModel& rank : ranks) rank.caches[s].length += batch.chunks[s].num_tokens;
    }
  }
  // lm_head: each rank's rows are the whole layer's rows, so the gathered logits are the same dot products.
  const int64_t rows = 3;
  const std::vector<float> x = random_values(rows * c.hidden_size, ++seed);
  const std::vector<float> expected = apply(model->weights.lm_head, x, rows);
  std::vector<float> gathered;
  int64_t shard_rows = 0;
  for (RankModel& rank : ranks) {
    const std::vector<float> part = apply(rank.weights.weights.lm_head, x, rows);
    shard_rows = rank.weights.weights.lm_head.out_features();
    gathered.insert(gathered.end(), part.begin(), part.end());
  }
  std::vector<float> logits(rows * c.vocab_size, NAN);
  assemble_vocab_shards(gathered.data(), GetParam().size, rows, shard_rows, c.vocab_size, logits.data());
  EXPECT_LE(max_relative_error(logits.data(), expected.data(), static_cast<int>(logits.size())), kRowSliceTolerance);
}

INSTANTIATE_TEST_SUITE_P(TensorParallel, ShardedLayers,
                         testing::Values(ShardCase{"synthetic", 2}, ShardCase{"synthetic", 4},
                                         ShardCase{"synthetic_nvfp4", 2}, ShardCase{"synthetic_nvfp4", 4},
                                         ShardCase{"llama", 2}, ShardCase{"default", 2},
                                         ShardCase{"default_nvfp4", 2}),
                         case_name);

class ShardedModel : public testing::TestWithParam<ShardCase> {};

// Whole-model logits: two sequences prefilled together, then greedy decode steps, TP = N against TP = 1.
TEST_P(ShardedModel, LogitsEqualTheWholeModel) {
  const auto model = load_named(GetParam().model);
  const int64_t vocab = model->config.vocab_size;
  CpuBackend whole(*model, 2);
  CpuTensorParallelBackend sharded(*model, 2, GetParam().size);
  ForwardBatch batch = two_sequences(6, 4);
  const std::vector<float> prompt = random_values(10, 7);
  for (size_t i = 0; i < batch.tokens.size(); ++i) {
    batch.tokens[i] = static_cast<int32_t>((prompt[i] + 1.0f) * 0.5f * static_cast<float>(vocab - 1));
  }
  for (int step = 0; step < 4; ++step) {
    const ForwardResult expected = whole.forward(batch);
    const ForwardResult got = sharded.forward(batch);
    ASSERT_EQ(got.rows, expected.rows);
    ASSERT_EQ(got.logits.size(), expected.logits.size());
    EXPECT_LE(max_relative_error(got.logits.data(), expected.logits.data(), static_cast<int>(got.logits.size())),
              kLogitsTolerance)
        << "step " << step;
    // Next step: each sequence's greedy token from the whole model.
    ForwardBatch next = two_sequences(1, 1, 6 + step, 4 + step);
    for (int64_t row = 0; row < expected.rows; ++row) {
      const float* logits = expected.logits.data() + row * vocab;
      next.tokens[row] = static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
    }
    batch = next;
  }
}

INSTANTIATE_TEST_SUITE_P(TensorParallel, ShardedModel,
                         testing::Values(ShardCase{"synthetic", 2}, ShardCase{"synthetic", 4},
                                         ShardCase{"synthetic_nvfp4", 4}, ShardCase{"llama", 2},
                                         ShardCase{"default", 2}, ShardCase{"default_nvfp4", 2}),
                         case_name);

// The fixtures whose head counts do not divide: the plan names the config field.
TEST(TensorParallelPlan, ShapesThatDoNotDivideNameTheField) {
  const auto hybrid = Model::load(fixture("qwen3_5_hybrid"));
  expect_error_containing([&] { plan_tensor_parallel_shard(hybrid->config, 2, 0); },
                          {"--tensor-parallel 2", "num_attention_heads = 3"});
  const auto qwen2 = Model::load(fixture("qwen2"));
  expect_error_containing([&] { plan_tensor_parallel_shard(qwen2->config, 2, 1); }, {"num_attention_heads = 7"});
  const auto qwen3 = Model::load(fixture("qwen3"));
  expect_error_containing([&] { plan_tensor_parallel_shard(qwen3->config, 4, 0); }, {"num_attention_heads = 5"});
  const auto base = Model::load(default_model());
  expect_error_containing([&] { plan_tensor_parallel_shard(base->config, 4, 0); },
                          {"--tensor-parallel 4", "num_attention_heads = 6", "not divisible by 4"});
  // 6 heads over 3 ranks divide, 2 KV heads over 3 ranks neither divide nor replicate evenly.
  expect_error_containing([&] { plan_tensor_parallel_shard(base->config, 3, 0); }, {"num_key_value_heads = 2"});
  ModelConfig odd_mlp = synthetic_hybrid(false)->config;
  odd_mlp.intermediate_size = 130;
  expect_error_containing([&] { plan_tensor_parallel_shard(odd_mlp, 4, 0); }, {"intermediate_size = 130"});
  ModelConfig odd_values = odd_mlp;
  odd_values.delta_net_num_value_heads = 6;
  expect_error_containing([&] { plan_tensor_parallel_shard(odd_values, 4, 0); }, {"linear_num_value_heads = 6"});
  expect_error_containing([&] { plan_tensor_parallel_shard(base->config, 0, 0); }, {"--tensor-parallel 0"});
  expect_error_containing([&] { plan_tensor_parallel_shard(base->config, 2, 2); }, {"rank 2"});
}

// The ranges the plan gives: GQA KV heads divided at TP = 2 and replicated at TP = 4, the padded vocabulary.
TEST(TensorParallelPlan, RangesOfEachRank) {
  const ModelConfig c = synthetic_hybrid(false)->config;
  const TensorParallelShard half = plan_tensor_parallel_shard(c, 2, 1);
  EXPECT_EQ(half.attention_heads.begin, 4);
  EXPECT_EQ(half.attention_kv_heads.begin, 1);
  EXPECT_EQ(half.attention_kv_heads.size(), 1);
  EXPECT_EQ(half.delta_net_value_heads.begin, 4);
  EXPECT_EQ(half.delta_net_key_heads.begin, 1);
  EXPECT_EQ(half.mlp_features.begin, 64);
  EXPECT_EQ(half.vocab_shard_rows, 51);
  EXPECT_EQ(half.vocab_rows.begin, 51);
  EXPECT_EQ(half.vocab_rows.end, 101);
  for (int rank = 0; rank < 4; ++rank) {
    const TensorParallelShard quarter = plan_tensor_parallel_shard(c, 4, rank);
    EXPECT_EQ(quarter.attention_heads.size(), 2);
    EXPECT_EQ(quarter.attention_kv_heads.begin, rank / 2) << "2 KV heads replicated over 4 ranks";
    EXPECT_EQ(quarter.attention_kv_heads.size(), 1);
    EXPECT_EQ(quarter.delta_net_key_heads.begin, rank / 2);
    EXPECT_EQ(quarter.vocab_shard_rows, 26);
    const ModelConfig local = shard_config(c, quarter);
    EXPECT_EQ(local.num_heads, 2);
    EXPECT_EQ(local.delta_net_num_value_heads, 2);
    EXPECT_EQ(local.intermediate_size, 32);
    EXPECT_EQ(local.vocab_size, 101);
  }
}

// The Qwen3.5-27B shape (spec/qwen3_5.md) over 2, 4 and 8 GPUs: at 8 its 4 KV heads are replicated, and every
// row-parallel layer's columns per rank stay whole NVFP4 blocks.
TEST(TensorParallelPlan, Qwen35_27bShapeShardsOverTwoFourAndEightRanks) {
  ModelConfig c;
  c.hidden_size = 5120;
  c.num_layers = 4;
  c.layer_kinds = {LayerKind::GatedDeltaNet, LayerKind::GatedDeltaNet, LayerKind::GatedDeltaNet,
                   LayerKind::FullAttention};
  c.intermediate_size = 17408;
  c.vocab_size = 248320;
  c.num_heads = 24;
  c.num_kv_heads = 4;
  c.head_dim = 256;
  c.delta_net_num_key_heads = 16;
  c.delta_net_num_value_heads = 48;
  c.delta_net_key_head_dim = 128;
  c.delta_net_value_head_dim = 128;
  for (const int size : {2, 4, 8}) {
    for (int rank = 0; rank < size; ++rank) {
      const TensorParallelShard shard = plan_tensor_parallel_shard(c, size, rank);
      const ModelConfig local = shard_config(c, shard);
      EXPECT_EQ(local.num_heads, 24 / size);
      EXPECT_EQ(local.num_kv_heads, size == 8 ? 1 : 4 / size);
      EXPECT_EQ(shard.attention_kv_heads.begin, size == 8 ? rank / 2 : rank * local.num_kv_heads);
      EXPECT_EQ(local.delta_net_num_value_heads, 48 / size);
      EXPECT_EQ(local.delta_net_num_key_heads, 16 / size);
      EXPECT_EQ(shard.vocab_shard_rows * size, 248320);
      for (const int64_t columns : {int64_t{local.num_heads} * c.head_dim, int64_t{local.delta_net_value_dim()},
                                    int64_t{local.intermediate_size}}) {
        EXPECT_EQ(columns % kNvfp4BlockSize, 0) << "TP " << size;
      }
    }
  }
}

// NVFP4 columns split only on 16-element blocks: at TP = 8 with head_dim 8, each rank's o_proj columns
// are one head of 8, inside a block.
TEST(TensorParallelPlan, Nvfp4ColumnsSplitOnBlockBoundariesOnly) {
  const auto model = synthetic_hybrid(true, /*head_dim=*/8);
  const TensorParallelShard shard = plan_tensor_parallel_shard(model->config, 8, 1);
  expect_error_containing([&] { shard_model_weights(model->weights, model->config, shard); },
                          {"layers.1.o_proj", "input columns [8, 16)", "16-element block"});
  // The lm_head and row-sliced NVFP4 tensors keep the whole model's scales: rank 1's in_proj_z rows are
  // rows 32.. of the whole layer, block scales included.
  const auto whole = synthetic_hybrid(true);
  const TensorParallelShard second = plan_tensor_parallel_shard(whole->config, 2, 1);
  const ShardedModelWeights sharded = shard_model_weights(whole->weights, whole->config, second);
  const Nvfp4Weight& full = *whole->weights.layers[0].delta_net.in_proj_z.nvfp4;
  const Nvfp4Weight& part = *sharded.weights.layers[0].delta_net.in_proj_z.nvfp4;
  ASSERT_EQ(part.rows, 64);
  ASSERT_EQ(part.cols, full.cols);
  EXPECT_EQ(part.global_scale, full.global_scale);
  const std::vector<float> full_values = dequantize_nvfp4(full), part_values = dequantize_nvfp4(part);
  EXPECT_TRUE(std::equal(part_values.begin(), part_values.end(), full_values.begin() + 64 * full.cols));
}

}  // namespace
}  // namespace uberlm
