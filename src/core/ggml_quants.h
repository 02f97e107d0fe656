#pragma once
// GGML tensor types, numbered as GGUF files store them, and dequantisation to fp32 of the formats
// we run. Each quantised type packs `block_size` consecutive elements of a row (along GGUF's ne[0],
// the innermost dimension) into `block_bytes` bytes:
//   Q8_0: f16 d, int8 q[32]                  x[i] = d * q[i]
//   Q4_0: f16 d, u8 qs[16]                   x[i] = d * (nibble(i) - 8)
//   Q4_1: f16 d, f16 m, u8 qs[16]            x[i] = d * nibble(i) + m
// where nibble(i) = qs[i] & 0xF for i < 16 and qs[i - 16] >> 4 for i >= 16 (GGML's layout: the low
// nibbles hold the first half of the block, the high nibbles the second).
#include <cstdint>
#include <optional>
#include <string>

namespace uberlm {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeTraits {
  const char* name;
  int64_t block_size;   // elements per block (1 for plain types)
  int64_t block_bytes;  // bytes per block
};

// The traits of a type id as a GGUF file gives it; nullopt for an id no GGML type has.
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type);
// "Q4_1", or "unknown type 42" for an id without traits.
std::string ggml_type_name(uint32_t type);

// True for the types ggml_dequantize handles: F32, F16, BF16, Q8_0, Q4_0, Q4_1.
bool ggml_can_dequantize(GgmlType type);
// data: `count` elements of `type` (count a multiple of its block size) -> out: count floats.
// Throws Error for a type ggml_can_dequantize refuses.
void ggml_dequantize(GgmlType type, const void* data, int64_t count, float* out);

}  // namespace uberlm
