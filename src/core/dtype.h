#pragma once
// Element types of checkpoint tensors and their scalar conversions. The conversions are the
// reference for every kernel: CUDA code must reproduce them bit for bit.
#include <cstdint>
#include <cstring>
#include <string_view>

namespace uberlm {

enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, U8, I8, I32, I64 };

// Name as written in safetensors headers ("F32", "BF16", ...).
std::string_view dtype_name(DType dtype);
// Returns false when `name` is not a dtype we read.
bool parse_dtype(std::string_view name, DType* out);
size_t dtype_size(DType dtype);

inline float bf16_to_f32(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, 4);
  return value;
}

// Round to nearest even, as torch's .to(torch.bfloat16); NaN stays NaN.
inline uint16_t f32_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);

// FP8 E4M3 (fn variant: no infinities, 0x7f/0xff are NaN, max 448).
float e4m3_to_f32(uint8_t bits);
// Round to nearest even, saturating at +-448 (ModelOpt's and torch's float8_e4m3fn cast of finite values).
uint8_t f32_to_e4m3(float value);

// FP4 E2M1 nibble: bit 3 sign, bits 0-2 index {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
inline constexpr float kE2M1Values[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
inline float e2m1_to_f32(uint8_t nibble) {
  float magnitude = kE2M1Values[nibble & 7];
  return (nibble & 8) ? -magnitude : magnitude;
}
// Round to nearest even onto the E2M1 grid, saturating at 6.
uint8_t f32_to_e2m1(float value);

}  // namespace uberlm
