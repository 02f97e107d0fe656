#include "ops/cuda/dequantize_nvfp4.h"

#include "ops/cuda/gemv_nvfp4.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace uberlm::cuda {

namespace {
// One thread per half block of 8 elements: one tiled code word and the block's scale in, 8 bf16 (one 16-byte
// store) out, so that a warp's loads and stores are each one contiguous run (16-byte stores strided 32 bytes
// apart, a thread per whole block, held the kernel at ~2.3 TB/s). Each pair comes out of the GEMV's unpack
// (e2m1 * 2^-126, nvfp4_gemv_pair) times the scale (e4m3 * 2^119, e4m3_scales_to_bf16x2) times 2^7, every
// product exact in bf16 (at most 6 significant bits, at least 2^-17), so the values equal the CPU's bit for
// bit, signed zeros included; integer and bf16 ops only, where a table lookup per element through the
// constant cache (different addresses per lane) held the kernel at ~30% of the copy bandwidth.
__global__ void dequantize_nvfp4_kernel(const uint32_t* packed, const uint8_t* scales, int64_t half_blocks,
                                        uint4* out) {
  const __nv_bfloat162 two_to_7 = __float2bfloat162_rn(0x1p7f);
  const uint32_t undo = *reinterpret_cast<const uint32_t*>(&two_to_7);
  for (int64_t h = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; h < half_blocks;
       h += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t word = packed[h];  // elements 8h .. 8h + 7; pair p is elements 8h + 2p, + 1
    uint32_t scale, same_scale;
    e4m3_scales_to_bf16x2(static_cast<uint16_t>(scales[h / 2] * 0x0101u), scale, same_scale);
    uint32_t words[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) words[p] = bf16x2_mul(bf16x2_mul(nvfp4_gemv_pair(word, p), scale), undo);
    out[h] = make_uint4(words[0], words[1], words[2], words[3]);
  }
}
}  // namespace

cudaError_t launch_dequantize_nvfp4_bf16(const Nvfp4Weight& weight, void* out, cudaStream_t stream) {
  const int64_t half_blocks = weight.rows * (weight.cols / (kNvfp4BlockSize / 2));
  if (half_blocks == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t grid = (half_blocks + kThreads - 1) / kThreads;
  constexpr int64_t kMaxGrid = 1 << 20;  // a grid-stride loop covers the rest
  dequantize_nvfp4_kernel<<<static_cast<unsigned>(grid < kMaxGrid ? grid : kMaxGrid), kThreads, 0, stream>>>(
      reinterpret_cast<const uint32_t*>(weight.packed), weight.scales, half_blocks, static_cast<uint4*>(out));
  return cudaGetLastError();
}

}  // namespace uberlm::cuda
