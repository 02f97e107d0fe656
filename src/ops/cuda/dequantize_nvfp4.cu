#include "ops/cuda/dequantize_nvfp4.h"

#include "ops/cuda/gemv_nvfp4.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace uberlm::cuda {

namespace {
// One thread per 16-element block: 8 code bytes (two tiled words) and one scale in, 16 bf16 (two 16-byte
// stores) out. Each pair comes out of the GEMV's unpack (e2m1 * 2^-126, nvfp4_gemv_pair) times the scale
// (e4m3 * 2^119, e4m3_scales_to_bf16x2) times 2^7, every product exact in bf16 (at most 6 significant bits,
// at least 2^-17), so the values equal the CPU's bit for bit, signed zeros included; integer and bf16 ops
// only, where a table lookup per element through the constant cache (different addresses per lane) held
// the kernel at ~30% of the copy bandwidth.
__global__ void dequantize_nvfp4_kernel(const uint8_t* packed, const uint8_t* scales, int64_t blocks, uint4* out) {
  const __nv_bfloat162 two_to_7 = __float2bfloat162_rn(0x1p7f);
  const uint32_t undo = *reinterpret_cast<const uint32_t*>(&two_to_7);
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint2 codes = *reinterpret_cast<const uint2*>(packed + b * 8);
    uint32_t scale, same_scale;
    e4m3_scales_to_bf16x2(static_cast<uint16_t>(scales[b] * 0x0101u), scale, same_scale);
    uint32_t words[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t word = i < 4 ? codes.x : codes.y;  // elements 0-7, 8-15; pair i % 4 is elements 2i, 2i + 1
      words[i] = bf16x2_mul(bf16x2_mul(nvfp4_gemv_pair(word, i % 4), scale), undo);
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
