#include "ops/cuda/nvfp4_wgmma_layout.h"

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/cuda/nvfp4_gemv_layout.h"

namespace uberlm::cuda {

bool nvfp4_wgmma_layout_fits(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 && cols % kNvfp4WgmmaTileK == 0;
}

int64_t nvfp4_wgmma_layout_bytes(int64_t rows, int64_t cols) {
  return (rows + kNvfp4WgmmaTileRows - 1) / kNvfp4WgmmaTileRows * (cols / kNvfp4WgmmaTileK) * kNvfp4WgmmaTileBytes;
}

std::vector<uint8_t> pack_nvfp4_for_wgmma(const uint8_t* packed, const uint8_t* scales, int64_t rows, int64_t cols) {
  if (!nvfp4_wgmma_layout_fits(rows, cols)) {
    fail("NVFP4 wgmma layout: [{}, {}] needs rows and a positive multiple of 64 columns", rows, cols);
  }
  const int64_t chunks = cols / kNvfp4WgmmaTileK;
  std::vector<uint8_t> out(static_cast<size_t>(nvfp4_wgmma_layout_bytes(rows, cols)));
  const auto code_at = [&](int64_t row, int64_t k) -> uint32_t {
    return row < rows ? (packed[row * (cols / 2) + k / 2] >> (4 * (k % 2))) & 0xF : 0u;  // zero padding rows
  };
  for (int64_t tile_row = 0; tile_row < (rows + kNvfp4WgmmaTileRows - 1) / kNvfp4WgmmaTileRows; ++tile_row) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      uint8_t* tile = out.data() + (tile_row * chunks + chunk) * kNvfp4WgmmaTileBytes;
      const int64_t row0 = tile_row * kNvfp4WgmmaTileRows, k0 = chunk * kNvfp4WgmmaTileK;
      for (int lane_index = 0; lane_index < 128; ++lane_index) {
        const int warp = lane_index / 32, g = lane_index % 32 / 4, t = lane_index % 4;
        const int64_t row = row0 + 16 * warp + g;
        uint32_t words[4];
        for (int s = 0; s < 4; ++s) {
          const int64_t k = k0 + 16 * s + 2 * t;
          const uint32_t codes[8] = {code_at(row, k),         code_at(row, k + 1),         // pair 0
                                     code_at(row + 8, k),     code_at(row + 8, k + 1),     // pair 1
                                     code_at(row, k + 8),     code_at(row, k + 9),         // pair 2
                                     code_at(row + 8, k + 8), code_at(row + 8, k + 9)};  // pair 3
          words[s] = nvfp4_gemv_word(codes, kNvfp4GemvBit);
        }
        std::memcpy(tile + lane_index * 16, words, 16);  // little-endian words, as the GPU loads them
      }
      for (int warp = 0; warp < 4; ++warp) {
        for (int g = 0; g < 8; ++g) {
          uint32_t words[4];
          for (int s = 0; s < 4; ++s) {
            const auto scale = [&](int64_t row) -> uint32_t {
              return row < rows ? f32_to_bf16(e4m3_to_f32(scales[row * (cols / 16) + k0 / 16 + s]) * 0x1p119f) : 0u;
            };
            words[s] = scale(row0 + 16 * warp + g) | (scale(row0 + 16 * warp + g + 8) << 16);
          }
          std::memcpy(tile + kNvfp4WgmmaTileCodeBytes + (8 * warp + g) * 16, words, 16);
        }
      }
    }
  }
  return out;
}

}  // namespace uberlm::cuda
