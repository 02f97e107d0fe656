#include "ops/cuda/nvfp4_gemv_layout.h"

#include <cstring>

#include "core/error.h"

namespace uberlm::cuda {

namespace {
void check_shape(int64_t rows, int64_t cols) {
  if (rows < 0 || cols <= 0 || cols % kNvfp4GemvGroupCodes != 0) {
    fail("NVFP4 GEMV layout: [{}, {}] needs a row length that is a positive multiple of {}", rows, cols,
         kNvfp4GemvGroupCodes);
  }
}

uint32_t code_of(const uint8_t* packed_group, int code) { return (packed_group[code / 2] >> (4 * (code % 2))) & 0xF; }
}  // namespace

std::vector<uint8_t> tile_nvfp4_codes_for_gemv(const uint8_t* packed, int64_t rows, int64_t cols) {
  check_shape(rows, cols);
  std::vector<uint8_t> out(static_cast<size_t>(rows * cols / 2));
  for (int64_t group = 0; group < rows * cols / kNvfp4GemvGroupCodes; ++group) {
    const uint8_t* in = packed + group * 16;
    uint32_t words[4];
    for (int w = 0; w < 4; ++w) {
      uint32_t codes[8];
      for (int c = 0; c < 8; ++c) codes[c] = code_of(in, 8 * w + c);
      words[w] = nvfp4_gemv_word(codes, kNvfp4GemvBit);
    }
    std::memcpy(out.data() + group * 16, words, 16);  // little-endian words, as the GPU loads them
  }
  return out;
}

std::vector<uint8_t> untile_nvfp4_codes(const uint8_t* tiled, int64_t rows, int64_t cols) {
  check_shape(rows, cols);
  std::vector<uint8_t> out(static_cast<size_t>(rows * cols / 2), 0);
  for (int64_t group = 0; group < rows * cols / kNvfp4GemvGroupCodes; ++group) {
    uint32_t words[4];
    std::memcpy(words, tiled + group * 16, 16);
    for (int c = 0; c < kNvfp4GemvGroupCodes; ++c) {
      const uint32_t code = nvfp4_gemv_code(words[c / 8], c % 8, kNvfp4GemvBit);
      out[group * 16 + c / 2] |= static_cast<uint8_t>(code << (4 * (c % 2)));
    }
  }
  return out;
}

}  // namespace uberlm::cuda
