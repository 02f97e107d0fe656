// Checkpoint folders: single file, sharded with an index, shards without an index, the tensor name
// mapping, and the broken layouts, each of which must give an Error naming the folder, index or shard.
#include "io/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "expect_error.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    dir_ = fs::temp_directory_path() / fmt::format("uberlm_checkpoint_{}_{}", ::getpid(), seed_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `names` as random bf16 tensors of random shapes into `file`; remembers their bytes.
  void write_shard(const std::string& file, const std::vector<std::string>& names) {
    std::uniform_int_distribution<int> dim(1, 9), byte(0, 255);
    std::vector<SafetensorsWriteEntry> entries;
    for (const auto& name : names) {
      std::vector<int64_t> shape = {dim(rng_), dim(rng_)};
      auto& bytes = bytes_[name];
      bytes.resize(2 * shape[0] * shape[1]);
      for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng_));
      entries.push_back({name, DType::BF16, shape, bytes.data()});
    }
    write_safetensors(dir_ / file, entries);
  }

  void write_text(const std::string& file, const std::string& text) { std::ofstream(dir_ / file) << text; }

  void expect_bytes(const Checkpoint& checkpoint, const std::string& canonical, const std::string& original) {
    SCOPED_TRACE(canonical);
    ASSERT_TRUE(checkpoint.has(canonical));
    EXPECT_EQ(checkpoint.original_name(canonical), original);
    TensorView view = checkpoint.get(canonical);
    const auto& bytes = bytes_.at(original);
    ASSERT_EQ(view.nbytes(), bytes.size());
    EXPECT_EQ(std::memcmp(view.data, bytes.data(), bytes.size()), 0);
  }

  // Expects Checkpoint::open(dir_) to throw an Error whose message holds every one of `needles`.
  void expect_open_error(const std::vector<std::string>& needles) {
    expect_error_containing([&] { Checkpoint::open(dir_); }, needles);
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  fs::path dir_;
  std::map<std::string, std::vector<uint8_t>> bytes_;  // original tensor name -> its data
};

TEST(CheckpointNames, CanonicalName) {
  EXPECT_EQ(Checkpoint::canonical_name("model.language_model.layers.3.mlp.up_proj.weight"), "layers.3.mlp.up_proj.weight");
  EXPECT_EQ(Checkpoint::canonical_name("model.language_model.embed_tokens.weight"), "embed_tokens.weight");
  EXPECT_EQ(Checkpoint::canonical_name("model.layers.0.self_attn.q_proj.weight"), "layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(Checkpoint::canonical_name("model.norm.weight"), "norm.weight");
  EXPECT_EQ(Checkpoint::canonical_name("lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(Checkpoint::canonical_name("model.visual.blocks.0.attn.qkv.weight"), "");
  EXPECT_EQ(Checkpoint::canonical_name("visual.merger.mlp.0.weight"), "");
  EXPECT_EQ(Checkpoint::canonical_name("mtp.fc.weight"), "");
  EXPECT_EQ(Checkpoint::canonical_name("model.mtp.layers.0.mlp.up_proj.weight"), "");
  // Only whole prefixes count.
  EXPECT_EQ(Checkpoint::canonical_name("mtp_gate.weight"), "mtp_gate.weight");
  EXPECT_EQ(Checkpoint::canonical_name("models.x"), "models.x");
}

TEST_F(CheckpointTest, SingleFileWithNameMapping) {
  SCOPED_TRACE(fmt::format("seed {}", seed_));
  write_shard("model.safetensors", {"model.language_model.embed_tokens.weight",
                                    "model.language_model.layers.0.linear_attn.in_proj_qkv.weight",
                                    "model.language_model.norm.weight", "lm_head.weight",
                                    "model.visual.blocks.0.attn.qkv.weight", "mtp.fc.weight",
                                    "model.mtp.layers.0.mlp.up_proj.weight"});
  auto checkpoint = Checkpoint::open(dir_);
  EXPECT_EQ(checkpoint->names(), (std::vector<std::string>{"embed_tokens.weight", "layers.0.linear_attn.in_proj_qkv.weight",
                                                           "lm_head.weight", "norm.weight"}));
  expect_bytes(*checkpoint, "embed_tokens.weight", "model.language_model.embed_tokens.weight");
  expect_bytes(*checkpoint, "layers.0.linear_attn.in_proj_qkv.weight",
               "model.language_model.layers.0.linear_attn.in_proj_qkv.weight");
  expect_bytes(*checkpoint, "lm_head.weight", "lm_head.weight");
  EXPECT_EQ(checkpoint->file_of("norm.weight"), dir_ / "model.safetensors");
  EXPECT_FALSE(checkpoint->has("visual.blocks.0.attn.qkv.weight"));
  EXPECT_FALSE(checkpoint->has("fc.weight"));
}

TEST_F(CheckpointTest, MissingTensor) {
  write_shard("model.safetensors", {"model.norm.weight"});
  auto checkpoint = Checkpoint::open(dir_);
  try {
    checkpoint->get("layers.7.mlp.down_proj.weight");
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              fmt::format("checkpoint {}: missing tensor layers.7.mlp.down_proj.weight", dir_.string()));
  }
  EXPECT_THROW(checkpoint->original_name("absent"), Error);
  EXPECT_THROW(checkpoint->file_of("absent"), Error);
}

TEST_F(CheckpointTest, ShardedWithIndex) {
  SCOPED_TRACE(fmt::format("seed {}", seed_));
  // A stray file the index does not name is ignored, though it holds a tensor of the shards.
  write_shard("consolidated.safetensors", {"model.embed_tokens.weight"});
  write_shard("model-00001-of-00002.safetensors", {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"});
  write_shard("model-00002-of-00002.safetensors", {"model.norm.weight", "lm_head.weight"});
  write_text("model.safetensors.index.json", R"({"metadata": {"total_size": 1}, "weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors",
    "model.norm.weight": "model-00002-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}})");
  auto checkpoint = Checkpoint::open(dir_);
  EXPECT_EQ(checkpoint->names().size(), 4u);
  expect_bytes(*checkpoint, "embed_tokens.weight", "model.embed_tokens.weight");
  expect_bytes(*checkpoint, "layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight");
  expect_bytes(*checkpoint, "norm.weight", "model.norm.weight");
  expect_bytes(*checkpoint, "lm_head.weight", "lm_head.weight");
  EXPECT_EQ(checkpoint->file_of("lm_head.weight"), dir_ / "model-00002-of-00002.safetensors");
}

TEST_F(CheckpointTest, ShardNamedInIndexButAbsent) {
  write_shard("model-00001-of-00002.safetensors", {"model.embed_tokens.weight"});
  write_text("model.safetensors.index.json", R"({"weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}})");
  expect_open_error({(dir_ / "model.safetensors.index.json").string(), "model-00002-of-00002.safetensors", "absent"});
}

TEST_F(CheckpointTest, TensorListedInIndexMissingInShard) {
  write_shard("model-00001-of-00002.safetensors", {"model.embed_tokens.weight"});
  write_shard("model-00002-of-00002.safetensors", {"lm_head.weight"});
  write_text("model.safetensors.index.json", R"({"weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.norm.weight": "model-00002-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}})");
  expect_open_error({"model.safetensors.index.json", "'model.norm.weight'", "model-00002-of-00002.safetensors", "lacks it"});
}

TEST_F(CheckpointTest, IndexPlacesTensorInTheWrongShard) {
  write_shard("model-00001-of-00002.safetensors", {"model.embed_tokens.weight"});
  write_shard("model-00002-of-00002.safetensors", {"lm_head.weight"});
  write_text("model.safetensors.index.json", R"({"weight_map": {
    "model.embed_tokens.weight": "model-00002-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}})");
  expect_open_error({"model.safetensors.index.json", "'model.embed_tokens.weight'", "lacks it"});
}

TEST_F(CheckpointTest, SameTensorInTwoShards) {
  write_shard("model-00001-of-00002.safetensors", {"model.embed_tokens.weight", "model.norm.weight"});
  write_shard("model-00002-of-00002.safetensors", {"model.norm.weight"});
  write_text("model.safetensors.index.json", R"({"weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.norm.weight": "model-00002-of-00002.safetensors"}})");
  expect_open_error({"'model.norm.weight'", "two shards", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors"});
}

TEST_F(CheckpointTest, BadIndex) {
  write_shard("model-00001-of-00001.safetensors", {"model.norm.weight"});
  const std::string index = (dir_ / "model.safetensors.index.json").string();
  write_text("model.safetensors.index.json", R"({"weight_map": )");
  expect_open_error({index, "invalid JSON"});
  write_text("model.safetensors.index.json", R"({"weights": {}})");
  expect_open_error({index, "'weight_map'"});
  write_text("model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": 3}})");
  expect_open_error({index, "'model.norm.weight'"});
  write_text("model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}})");
  expect_open_error({index, "'model.norm.weight'", "same folder"});
}

TEST_F(CheckpointTest, ShardsWithoutIndex) {
  SCOPED_TRACE(fmt::format("seed {}", seed_));
  write_shard("model-00001-of-00002.safetensors", {"model.language_model.embed_tokens.weight"});
  write_shard("model-00002-of-00002.safetensors", {"model.language_model.norm.weight", "lm_head.weight"});
  auto checkpoint = Checkpoint::open(dir_);
  EXPECT_EQ(checkpoint->names(), (std::vector<std::string>{"embed_tokens.weight", "lm_head.weight", "norm.weight"}));
  expect_bytes(*checkpoint, "embed_tokens.weight", "model.language_model.embed_tokens.weight");
  expect_bytes(*checkpoint, "norm.weight", "model.language_model.norm.weight");
}

TEST_F(CheckpointTest, SameTensorInTwoShardsWithoutIndex) {
  write_shard("a.safetensors", {"model.norm.weight"});
  write_shard("b.safetensors", {"model.norm.weight"});
  expect_open_error({dir_.string(), "'model.norm.weight'", "a.safetensors", "b.safetensors"});
}

TEST_F(CheckpointTest, TwoNamesForOneCanonicalName) {
  write_shard("model.safetensors", {"model.norm.weight", "model.language_model.norm.weight"});
  expect_open_error({dir_.string(), "'model.norm.weight'", "'model.language_model.norm.weight'", "'norm.weight'"});
}

TEST_F(CheckpointTest, NoSafetensors) {
  write_text("config.json", "{}");
  expect_open_error({dir_.string(), "no model.safetensors"});
}

TEST_F(CheckpointTest, NotADirectory) {
  dir_ /= "absent";
  expect_open_error({dir_.string(), "not a directory"});
  dir_ = dir_.parent_path();
}

TEST_F(CheckpointTest, CorruptShardNamesTheShard) {
  write_shard("model-00001-of-00001.safetensors", {"model.norm.weight"});
  fs::resize_file(dir_ / "model-00001-of-00001.safetensors", 4);
  expect_open_error({(dir_ / "model-00001-of-00001.safetensors").string()});
}

}  // namespace
}  // namespace uberlm
