// GGML block layouts, one hand-made block per type with values worked out by hand: the low nibbles
// hold a block's first 16 elements, the high nibbles the last 16. (tests/gguf_test.cpp checks random
// blocks against the gguf package's dequantisers.)
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/ggml_quants.h"

namespace uberlm {
namespace {

void put_f16(std::vector<uint8_t>& block, size_t at, float value) {
  const uint16_t bits = f32_to_f16(value);
  block[at] = static_cast<uint8_t>(bits & 0xFF), block[at + 1] = static_cast<uint8_t>(bits >> 8);
}

TEST(GgmlQuants, Q4_0BlockLayout) {
  std::vector<uint8_t> block(18);
  put_f16(block, 0, 0.5f);
  for (int i = 0; i < 16; ++i) block[2 + i] = static_cast<uint8_t>((15 - i) << 4 | i);  // low i, high 15 - i
  std::vector<float> out(32);
  ggml_dequantize(GgmlType::Q4_0, block.data(), 32, out.data());
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(out[i], 0.5f * (i - 8)) << i;
    EXPECT_EQ(out[16 + i], 0.5f * (15 - i - 8)) << 16 + i;
  }
}

TEST(GgmlQuants, Q4_1BlockLayout) {
  std::vector<uint8_t> block(20);
  put_f16(block, 0, 0.25f);
  put_f16(block, 2, -1.5f);
  for (int i = 0; i < 16; ++i) block[4 + i] = static_cast<uint8_t>((i % 3) << 4 | (15 - i));
  std::vector<float> out(32);
  ggml_dequantize(GgmlType::Q4_1, block.data(), 32, out.data());
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(out[i], 0.25f * (15 - i) - 1.5f) << i;
    EXPECT_EQ(out[16 + i], 0.25f * (i % 3) - 1.5f) << 16 + i;
  }
}

TEST(GgmlQuants, Q8_0BlockLayoutOverTwoBlocks) {
  std::vector<uint8_t> blocks(68);
  put_f16(blocks, 0, 0.125f);
  put_f16(blocks, 34, -2.0f);
  for (int i = 0; i < 32; ++i) {
    blocks[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i * 8 - 128));
    blocks[36 + i] = static_cast<uint8_t>(static_cast<int8_t>(127 - i));
  }
  std::vector<float> out(64);
  ggml_dequantize(GgmlType::Q8_0, blocks.data(), 64, out.data());
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(out[i], 0.125f * (i * 8 - 128)) << i;
    EXPECT_EQ(out[32 + i], -2.0f * (127 - i)) << 32 + i;
  }
}

TEST(GgmlQuants, PlainTypes) {
  const float f32[3] = {1.5f, -0.0f, 3e38f};
  std::vector<float> out(3);
  ggml_dequantize(GgmlType::F32, f32, 3, out.data());
  EXPECT_EQ(std::memcmp(out.data(), f32, sizeof(f32)), 0);
  const uint16_t f16[2] = {f32_to_f16(0.333f), f32_to_f16(-65504.0f)};
  ggml_dequantize(GgmlType::F16, f16, 2, out.data());
  EXPECT_EQ(out[0], f16_to_f32(f16[0]));
  EXPECT_EQ(out[1], -65504.0f);
  const uint16_t bf16[1] = {f32_to_bf16(-7.25f)};
  ggml_dequantize(GgmlType::BF16, bf16, 1, out.data());
  EXPECT_EQ(out[0], -7.25f);
}

TEST(GgmlQuants, RefusesWhatItCannotDequantise) {
  std::vector<uint8_t> block(210);
  std::vector<float> out(256);
  try {
    ggml_dequantize(GgmlType::Q6_K, block.data(), 256, out.data());
    ADD_FAILURE() << "Q6_K accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("Q6_K is not supported"), std::string::npos) << error.what();
  }
  EXPECT_THROW(ggml_dequantize(GgmlType::Q4_0, block.data(), 40, out.data()), Error);  // not whole blocks
  EXPECT_EQ(ggml_type_name(12), "Q4_K");
  EXPECT_EQ(ggml_type_name(4), "unknown type 4");
  EXPECT_FALSE(ggml_type_traits(4).has_value());
  EXPECT_EQ(ggml_type_traits(3)->block_bytes, 20);
}

}  // namespace
}  // namespace uberlm
