#include "ops/cuda/dequantize_nvfp4.h"

#include "ops/cuda/gemv_nvfp4.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace uberlm::cuda {

namespace {
// e2m1 magnitudes by code & 7; the sign is bit 3.
__constant__ float kE2m1Magnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

__device__ __forceinline__ float e2m1_times(uint32_t code, float scale) {
  const float magnitude = kE2m1Magnitude[code & 7];
  return ((code & 8) ? -magnitude : magnitude) * scale;  // IEEE signs: code 8 (-0) stays -0, as on the CPU
}

// Code i (0..7) of a word in the GEMV's tiled order (nvfp4_gemv_layout.h), as an E2M1 nibble: the GEMV's
// own unpack of its pair, its sign (bit 15 of the half) and magnitude bits (8:6) put back together.
__device__ __forceinline__ uint32_t tiled_code(uint32_t word, int i) {
  const uint32_t half = nvfp4_gemv_pair(word, i / 2) >> (16 * (i % 2));
  return ((half >> 12) & 8u) | ((half >> 6) & 7u);
}

// One thread per 16-element block: 8 code bytes (two tiled words) and one scale in, 16 bf16 (two 16-byte
// stores) out.
__global__ void dequantize_nvfp4_kernel(const uint8_t* packed, const uint8_t* scales, int64_t blocks, uint4* out) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint2 codes = *reinterpret_cast<const uint2*>(packed + b * 8);
    const __half_raw scale_half = __nv_cvt_fp8_to_halfraw(scales[b], __NV_E4M3);  // exact
    const float scale = __half2float(__half(scale_half));
    uint32_t words[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t word = i < 4 ? codes.x : codes.y;  // elements 0-7, 8-15
      const int first = 2 * (i % 4);
      const __nv_bfloat162 pair = __floats2bfloat162_rn(e2m1_times(tiled_code(word, first), scale),
                                                        e2m1_times(tiled_code(word, first + 1), scale));
      words[i] = *reinterpret_cast<const uint32_t*>(&pair);
    }
    out[2 * b] = make_uint4(words[0], words[1], words[2], words[3]);
    out[2 * b + 1] = make_uint4(words[4], words[5], words[6], words[7]);
  }
}
}  // namespace

cudaError_t launch_dequantize_nvfp4_bf16(const Nvfp4Weight& weight, void* out, cudaStream_t stream) {
  const int64_t blocks = weight.rows * (weight.cols / kNvfp4BlockSize);
  if (blocks == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t grid = (blocks + kThreads - 1) / kThreads;
  constexpr int64_t kMaxGrid = 1 << 20;  // a grid-stride loop covers the rest
  dequantize_nvfp4_kernel<<<static_cast<unsigned>(grid < kMaxGrid ? grid : kMaxGrid), kThreads, 0, stream>>>(
      weight.packed, weight.scales, blocks, static_cast<uint4*>(out));
  return cudaGetLastError();
}

}  // namespace uberlm::cuda
