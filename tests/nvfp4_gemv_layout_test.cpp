// The GPU GEMV's tiled NVFP4 code order (ops/cuda/nvfp4_gemv_layout.h), checked on the CPU: tiling is a
// bit permutation that untiling undoes, and the kernel's unpack (one rotate and mask per pair, emulated
// here with the same constants as gemv_nvfp4.cuh) gives every code's sign and magnitude at bf16's bits.
// The same for the small-M wgmma GEMM's fragment tiles (nvfp4_wgmma_layout.h): every code and scale is where
// the kernel's thread of its A fragment reads it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/cuda/nvfp4_gemv_layout.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"

namespace uberlm {
namespace {

uint32_t rotate_left(uint32_t x, int n) { return n == 0 ? x : (x << n) | (x >> (32 - n)); }

// The kernel's nvfp4_gemv_pair (gemv_nvfp4.cuh) on the host.
uint32_t unpack_pair(uint32_t word, int p) {
  constexpr uint32_t kBoth = 0x81C081C0u, kMagnitudes = 0x01C001C0u, kSigns = 0x80008000u;
  switch (p) {
    case 0: return word & kBoth;
    case 1: return rotate_left(word, 3) & kBoth;
    case 2: return (rotate_left(word, 6) & kMagnitudes) | (rotate_left(word, 1) & kSigns);
    default: return (rotate_left(word, 13) & kMagnitudes) | (rotate_left(word, 2) & kSigns);
  }
}

TEST(Nvfp4GemvLayout, EveryWordBitHoldsOneCodeBit) {
  std::set<int> bits;
  for (const auto& code : cuda::kNvfp4GemvBit) {
    for (int bit : code) bits.insert(bit);
  }
  EXPECT_EQ(bits.size(), 32u);
  EXPECT_EQ(*bits.begin(), 0);
  EXPECT_EQ(*bits.rbegin(), 31);
}

TEST(Nvfp4GemvLayout, TilingRoundTripsAndUnpacksToNaturalPairs) {
  std::mt19937 rng(77);
  const int64_t rows = 5, cols = 96;
  std::vector<uint8_t> packed(rows * cols / 2);
  for (auto& b : packed) b = static_cast<uint8_t>(rng());
  const std::vector<uint8_t> tiled = cuda::tile_nvfp4_codes_for_gemv(packed.data(), rows, cols);
  EXPECT_EQ(cuda::untile_nvfp4_codes(tiled.data(), rows, cols), packed);
  int64_t checked = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; k += 2) {
      // Codes k and k + 1 are pair p of word w of their 32-code group.
      const int64_t group = (r * cols + k) / 32, in_group = k % 32, w = in_group / 8, p = in_group % 8 / 2;
      uint32_t word;
      std::memcpy(&word, tiled.data() + group * 16 + w * 4, 4);
      const uint32_t pair = unpack_pair(word, static_cast<int>(p));
      for (int half = 0; half < 2; ++half) {
        const uint32_t code = (packed[(r * cols + k + half) / 2] >> (4 * half)) & 0xF;
        const uint32_t bits = pair >> (16 * half);
        EXPECT_EQ((bits >> 15) & 1, code >> 3) << "sign of code " << k + half << " row " << r;
        EXPECT_EQ((bits >> 6) & 7, code & 7) << "magnitude of code " << k + half << " row " << r;
        EXPECT_EQ(bits & 0x7E3F, 0u) << "stray bits of code " << k + half << " row " << r;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, rows * cols);
}

TEST(Nvfp4GemvLayout, RowsNotAMultipleOf32CodesAreRejected) {
  std::vector<uint8_t> packed(8);
  EXPECT_THROW(cuda::tile_nvfp4_codes_for_gemv(packed.data(), 1, 16), Error);
}

// Row r, k-value k of a [rows, cols] weight in the fragment tiles: the thread (warp, lane 4g + t) whose A
// fragment holds it, its word (k-step) and pair (a0a1 .. a6a7), as gemm_nvfp4_wgmma.cu reads them.
TEST(Nvfp4WgmmaLayout, EveryCodeAndScaleIsWhereItsFragmentThreadReadsIt) {
  std::mt19937 rng(78);
  const int64_t rows = 80, cols = 192, chunks = cols / 64;  // rows padded to 128 with zeros
  std::vector<uint8_t> packed(rows * cols / 2), scales(rows * cols / 16);
  for (auto& b : packed) b = static_cast<uint8_t>(rng());
  for (auto& b : scales) b = static_cast<uint8_t>(rng());
  const std::vector<uint8_t> tiles = cuda::pack_nvfp4_for_wgmma(packed.data(), scales.data(), rows, cols);
  ASSERT_EQ(static_cast<int64_t>(tiles.size()), 2 * chunks * cuda::kNvfp4WgmmaTileBytes);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; ++k) {
      const uint8_t* tile = tiles.data() + (r / 64 * chunks + k / 64) * cuda::kNvfp4WgmmaTileBytes;
      const int row = static_cast<int>(r % 64), kk = static_cast<int>(k % 64);
      const int warp = row / 16, g = row % 8, upper_row = row % 16 / 8, step = kk / 16, t = kk % 8 / 2,
                upper_k = kk % 16 / 8;
      uint32_t word;
      std::memcpy(&word, tile + (warp * 32 + 4 * g + t) * 16 + step * 4, 4);
      const uint32_t bits = unpack_pair(word, upper_row + 2 * upper_k) >> (16 * (kk % 2));
      const uint32_t code = (packed[(r * cols + k) / 2] >> (4 * (k % 2))) & 0xF;
      ASSERT_EQ((bits >> 15) & 1, code >> 3) << "sign of row " << r << " k " << k;
      ASSERT_EQ((bits >> 6) & 7, code & 7) << "magnitude of row " << r << " k " << k;
      uint16_t scale;
      std::memcpy(&scale, tile + cuda::kNvfp4WgmmaTileCodeBytes + (8 * warp + g) * 16 + step * 4 + 2 * upper_row, 2);
      const float expected = e4m3_to_f32(scales[r * (cols / 16) + k / 16]) * 0x1p119f;
      if (std::isnan(expected)) {
        ASSERT_TRUE(std::isnan(bf16_to_f32(scale))) << "scale of row " << r << " k " << k;
      } else {
        ASSERT_EQ(bf16_to_f32(scale), expected) << "scale of row " << r << " k " << k;
      }
    }
  }
}

TEST(Nvfp4WgmmaLayout, PaddingRowsAreZero) {
  const int64_t rows = 48, cols = 64;
  std::vector<uint8_t> packed(rows * cols / 2, 0xff), scales(rows * cols / 16, 0x38);
  const std::vector<uint8_t> tiles = cuda::pack_nvfp4_for_wgmma(packed.data(), scales.data(), rows, cols);
  ASSERT_EQ(static_cast<int64_t>(tiles.size()), cuda::kNvfp4WgmmaTileBytes);
  // Rows 48..63 are warp 3's: its codes and its scales of both halves.
  for (int lane = 0; lane < 32; ++lane) {
    for (int byte = 0; byte < 16; ++byte) EXPECT_EQ(tiles[(3 * 32 + lane) * 16 + byte], 0) << "lane " << lane;
  }
  for (int byte = 0; byte < 8 * 16; ++byte) EXPECT_EQ(tiles[cuda::kNvfp4WgmmaTileCodeBytes + 3 * 128 + byte], 0);
}

TEST(Nvfp4WgmmaLayout, ColumnsNotAMultipleOf64AreRejected) {
  std::vector<uint8_t> packed(64 * 96 / 2), scales(64 * 96 / 16);
  EXPECT_THROW(cuda::pack_nvfp4_for_wgmma(packed.data(), scales.data(), 64, 96), Error);
}

}  // namespace
}  // namespace uberlm
