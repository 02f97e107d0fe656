#pragma once
// NVFP4 weights (spec/nvfp4.md): FP4 E2M1 elements, 16-element blocks along K sharing one FP8 E4M3
// scale, one fp32 multiplier per tensor. W[n, k] = e2m1(n, k) * (e4m3(n, k / 16) * global_scale), the
// block multiplier rounded to fp32 first, as ModelOpt dequantises (compressed-tensors: e4m3 / divisor).
#include <cstdint>
#include <string_view>
#include <vector>

namespace uberlm {

inline constexpr int64_t kNvfp4BlockSize = 16;

// How the codes of each row are ordered: as the checkpoint stores them (byte j holds element 2j in the low
// nibble, 2j+1 in the high), or in the GPU GEMV's tiled order (ops/cuda/nvfp4_gemv_layout.h), into which
// the CUDA backend repacks them once at load.
enum class Nvfp4CodeOrder { Checkpoint, GemvTiled };

// A non-owning view; the pointers may be host or device memory.
struct Nvfp4Weight {
  int64_t rows = 0;  // N, output features
  int64_t cols = 0;  // K, input features; a multiple of 16
  const uint8_t* packed = nullptr;  // [N, K/2]; byte j holds element 2j in the low nibble, 2j+1 in the high
  const uint8_t* scales = nullptr;  // E4M3 [N, K/16]
  float global_scale = 0.0f;        // multiplier (ModelOpt's weight_scale_2; 1 / compressed-tensors' divisor)
  // compressed-tensors' weight_global_scale when the checkpoint stores a divisor, else 0. The reference
  // dequantiser then divides by it, as compressed-tensors does, so its values equal theirs bit for bit;
  // kernels may use global_scale (within one fp32 rounding of it).
  float global_divisor = 0.0f;
  Nvfp4CodeOrder code_order = Nvfp4CodeOrder::Checkpoint;
};

// An owning host tensor, as made by quantize_nvfp4.
struct Nvfp4Tensor {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> packed;  // [rows, cols/2]
  std::vector<uint8_t> scales;  // [rows, cols/16]
  float global_scale = 0.0f;

  Nvfp4Weight view() const { return {rows, cols, packed.data(), scales.data(), global_scale}; }
};

// compressed-tensors stores weight_global_scale as the divisor (W = e2m1 * e4m3 / weight_global_scale);
// our global_scale is the multiplier.
float global_scale_from_compressed_tensors(float weight_global_scale);

// Throws uberlm::Error naming `name` unless rows > 0 and cols is a positive multiple of 16.
void check_nvfp4_shape(int64_t rows, int64_t cols, std::string_view name);

// out[cols] = row `row` of W in fp32: e2m1 * (e4m3 * global_scale), or e2m1 * (e4m3 / global_divisor).
void dequantize_nvfp4_row(const Nvfp4Weight& weight, int64_t row, float* out);
// [rows, cols] fp32.
std::vector<float> dequantize_nvfp4(const Nvfp4Weight& weight);

// Quantises values [rows, cols] byte for byte as ModelOpt's NVFP4QTensor.quantize does:
// global = amax / (6 * 448) (1 when that is 0: an all-zero tensor, as compressed-tensors falls back);
// block scale = E4M3(clamp(amax(block) / (6 * global), 2^-9, 448)), an all-zero block taking 1;
// element = E2M1(w / (scale * global)), round to nearest even, saturating at 6, the sign bit set
// when the scaled value is below zero (so a small negative becomes -0, code 8).
// NaN or Inf in the input is an error naming `name`.
Nvfp4Tensor quantize_nvfp4(const float* values, int64_t rows, int64_t cols, std::string_view name);

}  // namespace uberlm
