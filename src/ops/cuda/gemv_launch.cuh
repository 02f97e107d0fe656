#pragma once
// Tile-shape dispatch of the standalone GEMV launches (gemv_nvfp4.cu, gemv_bf16.cu and their _swiglu
// twins of the paired epilogue): a run-time GemvTuning picks one of the compiled (depth, row tiles)
// pairs, M picks the token groups, the epilogue (gemv_tile.cuh) is a compile-time choice of the caller.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_tile.cuh"

namespace uberlm::cuda {

// A compiled pipeline depth, row-tile count and pipeline kind (registers or cp.async to shared memory).
template <int kDepth, int kRowTiles, bool kAsync = false>
struct GemvShape {
  static constexpr int depth = kDepth, row_tiles = kRowTiles;
  static constexpr bool async_copy = kAsync;
};

static_assert(kGemvMaxSegments == kGemvMaxTargets);

template <class Format, int kTokenGroups, int kRowTiles, int kDepth, bool kAsync, class Epilogue>
cudaError_t launch_gemv_tile(GemvSegments<Format> segments, const void* x, int m, int64_t k, const Epilogue& epilogue,
                             int warps, int k_split, cudaStream_t stream) {
  const int64_t rows_per_block = int64_t{kGemvDistinctRowTiles<Epilogue, kRowTiles>} * kGemvRowsPerTile * (warps / k_split);
  const dim3 grid(segments.assign_blocks(rows_per_block, Epilogue::kPairedTiles));
  const int smem = gemv_smem_bytes<Format, kTokenGroups, kRowTiles, kDepth, kAsync>(warps);
  const auto kernel = gemv_kernel<Format, kTokenGroups, kRowTiles, kDepth, kAsync, Epilogue>;
  if (smem > (48 << 10)) {  // the default limit of dynamic shared memory; larger needs an opt-in
    const cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (status != cudaSuccess) return status;
  }
  return launch_dependent(kernel, grid, warps * 32, smem, stream, segments, static_cast<const __nv_bfloat16*>(x), m, k,
                          k_split, epilogue);
}

template <class Format, int kRowTiles, int kDepth, bool kAsync, class Epilogue>
cudaError_t launch_gemv_tokens(const GemvSegments<Format>& segments, const void* x, int m, int64_t k,
                               const Epilogue& epilogue, int warps, int k_split, cudaStream_t stream) {
  static_assert(kGemvMaxTokens == 8 * kGemvTokensPerGroup);
  switch ((m + kGemvTokensPerGroup - 1) / kGemvTokensPerGroup) {
    case 1: return launch_gemv_tile<Format, 1, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 2: return launch_gemv_tile<Format, 2, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 3: return launch_gemv_tile<Format, 3, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 4: return launch_gemv_tile<Format, 4, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 5: return launch_gemv_tile<Format, 5, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 6: return launch_gemv_tile<Format, 6, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 7: return launch_gemv_tile<Format, 7, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 8: return launch_gemv_tile<Format, 8, kRowTiles, kDepth, kAsync>(segments, x, m, k, epilogue, warps, k_split, stream);
    default: return cudaErrorInvalidValue;
  }
}

// Launches the first of Shapes whose depth and row tiles match `tuning`; cudaErrorInvalidValue if none does.
template <class Format, class Shape, class... Shapes, class Epilogue>
cudaError_t launch_gemv(const GemvSegments<Format>& segments, const void* x, int m, int64_t k, const Epilogue& epilogue,
                        const GemvTuning& tuning, cudaStream_t stream) {
  if (tuning.depth == Shape::depth && tuning.row_tiles == Shape::row_tiles &&
      tuning.async_copy == Shape::async_copy) {
    return launch_gemv_tokens<Format, Shape::row_tiles, Shape::depth, Shape::async_copy>(
        segments, x, m, k, epilogue, tuning.warps, tuning.k_split, stream);
  }
  if constexpr (sizeof...(Shapes) > 0) {
    return launch_gemv<Format, Shapes...>(segments, x, m, k, epilogue, tuning, stream);
  } else {
    return cudaErrorInvalidValue;
  }
}

}  // namespace uberlm::cuda
