// launch_pack_nvfp4_for_wgmma: the small-M GEMM's fragment tiles (nvfp4_wgmma_layout.h) made on the GPU from a
// weight in the GEMV's tiled order, one thread per 16-byte vector of a tile (128 of codes, 32 of scales).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/nvfp4_gemv_layout.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"

namespace uberlm::cuda {

namespace {

constexpr int kTileVectors = static_cast<int>(kNvfp4WgmmaTileBytes / 16);
constexpr int kCodeVectors = static_cast<int>(kNvfp4WgmmaTileCodeBytes / 16);

struct CodeBits {
  int bit[8][4];  // kNvfp4GemvBit, which device code cannot read from the host's constant
};

struct PackArgs {
  const uint8_t* packed;  // GEMV tiled order
  const uint8_t* scales;
  int64_t rows, cols;
  uint8_t* tiles;
  int64_t vectors;
  CodeBits bits;
};

__device__ uint32_t code_at(const PackArgs& args, int64_t row, int64_t k) {
  if (row >= args.rows) return 0;  // padding rows
  const uint8_t* group = args.packed + (row * args.cols + (k & ~int64_t{31})) / 2;
  const uint32_t word = *reinterpret_cast<const uint32_t*>(group + (k % 32) / 8 * 4);
  return nvfp4_gemv_code(word, static_cast<int>(k % 8), args.bits.bit);
}

__device__ uint32_t bf16_scale_at(const PackArgs& args, int64_t row, int64_t block) {
  if (row >= args.rows) return 0;
  const __half_raw half = __nv_cvt_fp8_to_halfraw(args.scales[row * (args.cols / 16) + block], __NV_E4M3);
  const __nv_bfloat16 scaled = __float2bfloat16_rn(__half2float(__half(half)) * 0x1p119f);
  return *reinterpret_cast<const uint16_t*>(&scaled);
}

__global__ void pack_nvfp4_for_wgmma_kernel(const PackArgs args) {
  const int64_t vector = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vector >= args.vectors) return;
  const int64_t tile = vector / kTileVectors, chunks = args.cols / kNvfp4WgmmaTileK;
  const int part = static_cast<int>(vector % kTileVectors);
  const int64_t row0 = tile / chunks * kNvfp4WgmmaTileRows, k0 = tile % chunks * kNvfp4WgmmaTileK;
  uint32_t words[4];
  if (part < kCodeVectors) {
    const int warp = part / 32, g = part % 32 / 4, t = part % 4;
    const int64_t row = row0 + 16 * warp + g;
    for (int s = 0; s < 4; ++s) {
      const int64_t k = k0 + 16 * s + 2 * t;
      const uint32_t codes[8] = {code_at(args, row, k),         code_at(args, row, k + 1),
                                 code_at(args, row + 8, k),     code_at(args, row + 8, k + 1),
                                 code_at(args, row, k + 8),     code_at(args, row, k + 9),
                                 code_at(args, row + 8, k + 8), code_at(args, row + 8, k + 9)};
      words[s] = nvfp4_gemv_word(codes, args.bits.bit);
    }
  } else {
    const int index = part - kCodeVectors, warp = index / 8, g = index % 8;
    const int64_t row = row0 + 16 * warp + g;
    for (int s = 0; s < 4; ++s) {
      words[s] = bf16_scale_at(args, row, k0 / 16 + s) | (bf16_scale_at(args, row + 8, k0 / 16 + s) << 16);
    }
  }
  *reinterpret_cast<uint4*>(args.tiles + tile * kNvfp4WgmmaTileBytes + part * 16) =
      make_uint4(words[0], words[1], words[2], words[3]);
}

}  // namespace

cudaError_t launch_pack_nvfp4_for_wgmma(const Nvfp4Weight& gemv_tiled, uint8_t* tiles, cudaStream_t stream) {
  if (gemv_tiled.code_order != Nvfp4CodeOrder::GemvTiled || !nvfp4_wgmma_layout_fits(gemv_tiled.rows, gemv_tiled.cols) ||
      tiles == nullptr || reinterpret_cast<uintptr_t>(tiles) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  PackArgs args{gemv_tiled.packed, gemv_tiled.scales, gemv_tiled.rows, gemv_tiled.cols, tiles,
                nvfp4_wgmma_layout_bytes(gemv_tiled.rows, gemv_tiled.cols) / 16, {}};
  for (int c = 0; c < 8; ++c) {
    for (int b = 0; b < 4; ++b) args.bits.bit[c][b] = kNvfp4GemvBit[c][b];
  }
  constexpr int kThreads = 256;
  pack_nvfp4_for_wgmma_kernel<<<blocks_for(args.vectors, kThreads), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace uberlm::cuda
