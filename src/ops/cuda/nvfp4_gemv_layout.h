#pragma once
// The GPU GEMV's tiled order of NVFP4 codes, made once at load from the checkpoint's order.
//
// A row's codes come in groups of 32 (one lane's 16-byte load, k-values [32g, 32g + 32)), four 32-bit words
// of 8 codes each. Word w holds codes 8w .. 8w + 7 as four pairs (8w + 2p, 8w + 2p + 1), p = 0..3; pair p
// is the bf16x2 mma operand of k-values (8w + 2p, +1), in natural k order, so the activations are the
// mma's B operands as loaded. Each code's bits (E2M1: m, e0, e1, sign) sit where one rotate and a mask put
// them at bf16's bits 6, 7, 8 (value x 2^-126) and 15 of its half (nvfp4_gemv_pair):
//   pair 0: in place                          pair 1: rotated left by 3
//   pair 2: magnitudes rotated by 6, sign by 1    pair 3: magnitudes rotated by 13, sign by 2
// so a word costs 11 integer ops where the checkpoint order costs 15, and no activation permutes.
#include <cstdint>
#include <vector>

#include "core/host_device.h"

namespace uberlm::cuda {

inline constexpr int kNvfp4GemvGroupCodes = 32;

// kNvfp4GemvBit[i][b]: the word bit of bit b (0: m, 1: e0, 2: e1, 3: sign) of code i of the word.
inline constexpr int kNvfp4GemvBit[8][4] = {
    {6, 7, 8, 15},   {22, 23, 24, 31},  // pair 0
    {3, 4, 5, 12},   {19, 20, 21, 28},  // pair 1
    {0, 1, 2, 14},   {16, 17, 18, 30},  // pair 2
    {25, 26, 27, 13}, {9, 10, 11, 29},  // pair 3
};

// The word of 8 codes (code i = pair i / 2's element i % 2, each 4 bits) with every bit where `bits` (kNvfp4GemvBit;
// a kernel passes its copy) puts it, so that nvfp4_gemv_pair(word, p) unpacks codes 2p and 2p + 1 (this order and
// the wgmma fragment order use it); and code i of such a word.
UBERLM_HOST_DEVICE inline uint32_t nvfp4_gemv_word(const uint32_t (&codes)[8], const int (&bits)[8][4]) {
  uint32_t word = 0;
  for (int c = 0; c < 8; ++c) {
    for (int b = 0; b < 4; ++b) word |= ((codes[c] >> b) & 1u) << bits[c][b];
  }
  return word;
}
UBERLM_HOST_DEVICE inline uint32_t nvfp4_gemv_code(uint32_t word, int code, const int (&bits)[8][4]) {
  uint32_t value = 0;
  for (int b = 0; b < 4; ++b) value |= ((word >> bits[code][b]) & 1u) << b;
  return value;
}

// packed: [rows, cols / 2] in the checkpoint's order, cols a multiple of 32 -> the same bytes tiled.
std::vector<uint8_t> tile_nvfp4_codes_for_gemv(const uint8_t* packed, int64_t rows, int64_t cols);
// The inverse (tests, and reading tiled codes back on the host).
std::vector<uint8_t> untile_nvfp4_codes(const uint8_t* tiled, int64_t rows, int64_t cols);

}  // namespace uberlm::cuda
