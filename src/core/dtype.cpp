#include "core/dtype.h"

#include <cmath>

namespace uberlm {

namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4},         {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::U8, "U8", 1},   {DType::I8, "I8", 1},
    {DType::I32, "I32", 4},         {DType::I64, "I64", 8},
};
}  // namespace

std::string_view dtype_name(DType dtype) { return kDTypes[static_cast<int>(dtype)].name; }
size_t dtype_size(DType dtype) { return kDTypes[static_cast<int>(dtype)].size; }

bool parse_dtype(std::string_view name, DType* out) {
  for (const auto& info : kDTypes) {
    if (info.name == name) {
      *out = info.dtype;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t bits) {
  uint32_t sign = (bits >> 15) & 1, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  }
  return sign ? -magnitude : magnitude;
}

uint16_t f32_to_f16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  float magnitude = std::fabs(value);
  if (std::isnan(value)) return sign | 0x7e00;
  if (magnitude >= 65520.0f) return sign | 0x7c00;
  if (magnitude < std::ldexp(1.0f, -14)) {
    // Subnormal: the value in units of 2^-24, rounded to nearest even by nearbyint.
    return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(magnitude, 24)));
  }
  int exponent;
  std::frexp(magnitude, &exponent);  // magnitude = m * 2^exponent, m in [0.5, 1)
  float scaled = std::nearbyint(std::ldexp(magnitude, 11 - exponent));  // 11 significant bits
  uint32_t mantissa = static_cast<uint32_t>(scaled);
  if (mantissa == 2048) {
    mantissa = 1024;
    exponent += 1;
  }
  uint32_t biased = static_cast<uint32_t>(exponent - 1 + 15);
  if (biased >= 31) return sign | 0x7c00;
  return sign | static_cast<uint16_t>((biased << 10) | (mantissa & 0x3ff));
}

float e4m3_to_f32(uint8_t bits) {
  uint32_t sign = bits >> 7, exponent = (bits >> 3) & 0xf, mantissa = bits & 7;
  if (exponent == 15 && mantissa == 7) return NAN;
  float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -9)
                                  : std::ldexp(static_cast<float>(mantissa | 8), static_cast<int>(exponent) - 10);
  return sign ? -magnitude : magnitude;
}

uint8_t f32_to_e4m3(float value) {
  uint8_t sign = std::signbit(value) ? 0x80 : 0;
  float magnitude = std::fabs(value);
  if (std::isnan(value)) return sign | 0x7f;
  if (magnitude >= 448.0f) return sign | 0x7e;
  if (magnitude < std::ldexp(1.0f, -6)) {
    // Subnormal: units of 2^-9, three mantissa bits; 8 units rounds up into the smallest normal.
    return sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(magnitude, 9)));
  }
  int exponent;
  std::frexp(magnitude, &exponent);
  uint32_t mantissa = static_cast<uint32_t>(std::nearbyint(std::ldexp(magnitude, 4 - exponent)));  // 4 bits
  if (mantissa == 16) {
    mantissa = 8;
    exponent += 1;
  }
  uint32_t biased = static_cast<uint32_t>(exponent - 1 + 7);
  uint8_t encoded = static_cast<uint8_t>((biased << 3) | (mantissa & 7));
  if (encoded > 0x7e) encoded = 0x7e;
  return sign | encoded;
}

uint8_t f32_to_e2m1(float value) {
  uint8_t sign = std::signbit(value) ? 8 : 0;
  float magnitude = std::fabs(value);
  // Midpoints between grid values; ties go to the even code (even index in kE2M1Values).
  constexpr float kMidpoints[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  uint8_t code = 0;
  while (code < 7 && magnitude > kMidpoints[code]) ++code;
  if (code < 7 && magnitude == kMidpoints[code] && (code & 1)) ++code;
  return sign | code;
}

}  // namespace uberlm
