#include "core/ggml_quants.h"

#include <cstring>

#include <fmt/format.h>

#include "core/dtype.h"
#include "core/error.h"

namespace uberlm {

namespace {

constexpr int64_t kQuantBlock = 32;  // elements per Q8_0 / Q4_0 / Q4_1 block

uint16_t load_u16(const uint8_t* bytes) { return static_cast<uint16_t>(bytes[0] | (bytes[1] << 8)); }

// Q8_0 block: [d f16][q int8 x 32], 34 bytes.
void dequantize_q8_0(const uint8_t* block, float* out) {
  const float d = f16_to_f32(load_u16(block));
  for (int i = 0; i < kQuantBlock; ++i) out[i] = d * static_cast<float>(static_cast<int8_t>(block[2 + i]));
}

// Q4_0 block: [d f16][qs u8 x 16], 18 bytes; x = d * (nibble - 8).
void dequantize_q4_0(const uint8_t* block, float* out) {
  const float d = f16_to_f32(load_u16(block));
  const uint8_t* qs = block + 2;
  for (int i = 0; i < kQuantBlock / 2; ++i) {
    out[i] = d * static_cast<float>((qs[i] & 0x0F) - 8);
    out[i + kQuantBlock / 2] = d * static_cast<float>((qs[i] >> 4) - 8);
  }
}

// Q4_1 block: [d f16][m f16][qs u8 x 16], 20 bytes; x = d * nibble + m.
void dequantize_q4_1(const uint8_t* block, float* out) {
  const float d = f16_to_f32(load_u16(block));
  const float m = f16_to_f32(load_u16(block + 2));
  const uint8_t* qs = block + 4;
  for (int i = 0; i < kQuantBlock / 2; ++i) {
    out[i] = d * static_cast<float>(qs[i] & 0x0F) + m;
    out[i + kQuantBlock / 2] = d * static_cast<float>(qs[i] >> 4) + m;
  }
}

}  // namespace

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return GgmlTypeTraits{"F32", 1, 4};
    case GgmlType::F16: return GgmlTypeTraits{"F16", 1, 2};
    case GgmlType::Q4_0: return GgmlTypeTraits{"Q4_0", 32, 18};
    case GgmlType::Q4_1: return GgmlTypeTraits{"Q4_1", 32, 20};
    case GgmlType::Q5_0: return GgmlTypeTraits{"Q5_0", 32, 22};
    case GgmlType::Q5_1: return GgmlTypeTraits{"Q5_1", 32, 24};
    case GgmlType::Q8_0: return GgmlTypeTraits{"Q8_0", 32, 34};
    case GgmlType::Q2_K: return GgmlTypeTraits{"Q2_K", 256, 84};
    case GgmlType::Q3_K: return GgmlTypeTraits{"Q3_K", 256, 110};
    case GgmlType::Q4_K: return GgmlTypeTraits{"Q4_K", 256, 144};
    case GgmlType::Q5_K: return GgmlTypeTraits{"Q5_K", 256, 176};
    case GgmlType::Q6_K: return GgmlTypeTraits{"Q6_K", 256, 210};
    case GgmlType::Q8_K: return GgmlTypeTraits{"Q8_K", 256, 292};
    case GgmlType::IQ2_XXS: return GgmlTypeTraits{"IQ2_XXS", 256, 66};
    case GgmlType::IQ2_XS: return GgmlTypeTraits{"IQ2_XS", 256, 74};
    case GgmlType::IQ3_XXS: return GgmlTypeTraits{"IQ3_XXS", 256, 98};
    case GgmlType::IQ1_S: return GgmlTypeTraits{"IQ1_S", 256, 50};
    case GgmlType::IQ4_NL: return GgmlTypeTraits{"IQ4_NL", 32, 18};
    case GgmlType::IQ3_S: return GgmlTypeTraits{"IQ3_S", 256, 110};
    case GgmlType::IQ2_S: return GgmlTypeTraits{"IQ2_S", 256, 82};
    case GgmlType::IQ4_XS: return GgmlTypeTraits{"IQ4_XS", 256, 136};
    case GgmlType::I8: return GgmlTypeTraits{"I8", 1, 1};
    case GgmlType::I16: return GgmlTypeTraits{"I16", 1, 2};
    case GgmlType::I32: return GgmlTypeTraits{"I32", 1, 4};
    case GgmlType::I64: return GgmlTypeTraits{"I64", 1, 8};
    case GgmlType::F64: return GgmlTypeTraits{"F64", 1, 8};
    case GgmlType::IQ1_M: return GgmlTypeTraits{"IQ1_M", 256, 56};
    case GgmlType::BF16: return GgmlTypeTraits{"BF16", 1, 2};
    case GgmlType::TQ1_0: return GgmlTypeTraits{"TQ1_0", 256, 54};
    case GgmlType::TQ2_0: return GgmlTypeTraits{"TQ2_0", 256, 66};
    case GgmlType::MXFP4: return GgmlTypeTraits{"MXFP4", 32, 17};
  }
  return std::nullopt;
}

std::string ggml_type_name(uint32_t type) {
  const auto traits = ggml_type_traits(type);
  return traits ? traits->name : fmt::format("unknown type {}", type);
}

bool ggml_can_dequantize(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
      return true;
    default:
      return false;
  }
}

void ggml_dequantize(GgmlType type, const void* data, int64_t count, float* out) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  const auto traits = ggml_type_traits(static_cast<uint32_t>(type));
  if (!ggml_can_dequantize(type) || !traits) {
    fail("ggml_dequantize: tensor type {} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
         ggml_type_name(static_cast<uint32_t>(type)));
  }
  if (count % traits->block_size != 0) {
    fail("ggml_dequantize: {} elements of {} are not a whole number of {}-element blocks", count, traits->name,
         traits->block_size);
  }
  const int64_t blocks = count / traits->block_size;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = bytes + b * traits->block_bytes;
    float* dst = out + b * traits->block_size;
    switch (type) {
      case GgmlType::F32: std::memcpy(dst, block, 4); break;
      case GgmlType::F16: *dst = f16_to_f32(load_u16(block)); break;
      case GgmlType::BF16: *dst = bf16_to_f32(load_u16(block)); break;
      case GgmlType::Q8_0: dequantize_q8_0(block, dst); break;
      case GgmlType::Q4_0: dequantize_q4_0(block, dst); break;
      case GgmlType::Q4_1: dequantize_q4_1(block, dst); break;
      default: break;  // refused above
    }
  }
}

}  // namespace uberlm
