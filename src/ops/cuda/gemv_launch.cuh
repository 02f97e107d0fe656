#pragma once
// Tile-shape dispatch of the standalone GEMV launches (gemv_nvfp4.cu, gemv_bf16.cu and their _swiglu
// twins of the paired epilogue): a run-time GemvTuning picks one of the compiled (depth, row tiles,
// pipeline) shapes, M picks the token groups, the epilogue (gemv_tile.cuh) is a compile-time choice of the
// caller.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_stream.cuh"
#include "ops/cuda/gemv_tile.cuh"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/tensor_map.h"

namespace uberlm::cuda {

// A compiled pipeline depth, row-tile count, pipeline kind (GemvPipeline) and batch invariance
// (GemvTuning::batch_invariant).
template <int kDepth, int kRowTiles, GemvPipeline kPipeline = GemvPipeline::Registers, bool kBatchInvariant = false>
struct GemvShape {
  static constexpr int depth = kDepth, row_tiles = kRowTiles;
  static constexpr GemvPipeline pipeline = kPipeline;
  static constexpr bool batch_invariant = kBatchInvariant;
};

static_assert(kGemvMaxSegments == kGemvMaxTargets);

template <class Format, int kTokenGroups, int kRowTiles, int kDepth, bool kAsync, bool kBatchInvariant, class Epilogue>
cudaError_t launch_gemv_tile(GemvSegments<Format> segments, const void* x, int m, int64_t k, const Epilogue& epilogue,
                             int warps, int k_split, cudaStream_t stream) {
  const int64_t rows_per_block = int64_t{kGemvDistinctRowTiles<Epilogue, kRowTiles>} * kGemvRowsPerTile * (warps / k_split);
  const dim3 grid(segments.assign_blocks(rows_per_block, Epilogue::kPairedTiles));
  const int smem = gemv_smem_bytes<Format, kTokenGroups, kRowTiles, kDepth, kAsync>(warps);
  const auto kernel = gemv_kernel<Format, kTokenGroups, kRowTiles, kDepth, kAsync, kBatchInvariant, Epilogue>;
  const cudaError_t allowed = allow_dynamic_shared_memory(kernel, smem);
  if (allowed != cudaSuccess) return allowed;
  return launch_dependent(kernel, grid, warps * 32, smem, stream, segments, static_cast<const __nv_bfloat16*>(x), m, k,
                          k_split, epilogue);
}

template <class Format, int kRowTiles, int kDepth, bool kAsync, bool kBatchInvariant, class Epilogue>
cudaError_t launch_gemv_tokens(const GemvSegments<Format>& segments, const void* x, int m, int64_t k,
                               const Epilogue& epilogue, int warps, int k_split, cudaStream_t stream) {
  static_assert(kGemvMaxTokens == 8 * kGemvTokensPerGroup);
  switch ((m + kGemvTokensPerGroup - 1) / kGemvTokensPerGroup) {
    case 1: return launch_gemv_tile<Format, 1, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 2: return launch_gemv_tile<Format, 2, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 3: return launch_gemv_tile<Format, 3, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 4: return launch_gemv_tile<Format, 4, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 5: return launch_gemv_tile<Format, 5, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 6: return launch_gemv_tile<Format, 6, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 7: return launch_gemv_tile<Format, 7, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    case 8: return launch_gemv_tile<Format, 8, kRowTiles, kDepth, kAsync, kBatchInvariant>(segments, x, m, k, epilogue, warps, k_split, stream);
    default: return cudaErrorInvalidValue;
  }
}

// The bulk-stream kernel (gemv_stream.cuh) for M <= 16: a persistent grid of as many clusters as fit at
// once (at most one per tile), each block `warps` consumer warps and one producer.
template <int kTokenGroups, int kDepth, class Epilogue>
cudaError_t launch_gemv_stream_tile(GemvSegments<Nvfp4Format> segments, const void* x, int m, int64_t k,
                                    const Epilogue& epilogue, int warps, int cluster, cudaStream_t stream) {
  constexpr int kParts = Epilogue::kPairedTiles ? 2 : 1;
  const GemvStreamWork work{segments.assign_blocks(kGemvRowsPerTile, Epilogue::kPairedTiles),
                            static_cast<int>((k + kStreamStageK - 1) / kStreamStageK), cluster, warps};
  GemvStreamMaps maps{};
  for (int i = 0; i < segments.count; ++i) {
    const Nvfp4Format& w = segments.formats[i];
    cudaError_t status = encode_byte_tile_map(maps.codes[i], w.packed, k / 2, segments.rows[i], kStreamHalfBytes,
                                              kGemvRowsPerTile, true);
    if (status == cudaSuccess) {
      status = encode_byte_tile_map(maps.scales[i], w.scales, k / 16, segments.rows[i], kStreamScaleBytes,
                                    kGemvRowsPerTile, false);
    }
    if (status != cudaSuccess) return status;
  }
  const int smem = gemv_stream_smem_bytes<kTokenGroups, kParts, kDepth>(warps, cluster);
  const auto kernel = gemv_stream_kernel<kTokenGroups, kParts, kDepth, Epilogue>;
  cudaError_t status = allow_dynamic_shared_memory(kernel, smem);
  if (status != cudaSuccess) return status;
  const dim3 block((warps + 1) * 32);
  // Clusters resident at once for this block shape, asked once per shape (warps 1..8, clusters 1, 2, 4).
  static std::atomic<int> resident_clusters[kGemvStreamMaxWarps + 1][kGemvStreamMaxCluster + 1];
  int clusters = resident_clusters[warps][cluster].load(std::memory_order_relaxed);
  if (clusters == 0) {
    cudaLaunchAttribute shape{};
    shape.id = cudaLaunchAttributeClusterDimension;
    shape.val.clusterDim = {static_cast<unsigned>(cluster), 1, 1};
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(cluster);
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.attrs = &shape;
    config.numAttrs = 1;
    status = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config);
    if (status != cudaSuccess) return status;
    if (clusters < 1) return cudaErrorInvalidConfiguration;
    resident_clusters[warps][cluster].store(clusters, std::memory_order_relaxed);
  }
  const dim3 grid((work.tiles < clusters ? work.tiles : clusters) * cluster);
  const auto* activations = static_cast<const __nv_bfloat16*>(x);
  if (cluster == 1) {
    return launch_dependent(kernel, grid, block, smem, stream, segments, maps, activations, m, int(k), work, epilogue);
  }
  return launch_dependent_clusters(kernel, grid, block, dim3(cluster), smem, stream, segments, maps, activations, m,
                                   int(k), work, epilogue);
}

template <int kDepth, class Epilogue>
cudaError_t launch_gemv_stream(const GemvSegments<Nvfp4Format>& segments, const void* x, int m, int64_t k,
                               const Epilogue& epilogue, int warps, int cluster, cudaStream_t stream) {
  static_assert(kStreamMaxTokenGroups == 2);
  if (warps < 1 || warps > kGemvStreamMaxWarps || cluster < 1 || cluster > kGemvStreamMaxCluster) {
    return cudaErrorInvalidValue;
  }
  switch ((m + kGemvTokensPerGroup - 1) / kGemvTokensPerGroup) {
    case 1: return launch_gemv_stream_tile<1, kDepth>(segments, x, m, k, epilogue, warps, cluster, stream);
    case 2: return launch_gemv_stream_tile<2, kDepth>(segments, x, m, k, epilogue, warps, cluster, stream);
    default: return cudaErrorInvalidValue;
  }
}

// Launches the first of Shapes whose depth, row tiles and pipeline match `tuning`; cudaErrorInvalidValue if
// none does.
template <class Format, class Shape, class... Shapes, class Epilogue>
cudaError_t launch_gemv(const GemvSegments<Format>& segments, const void* x, int m, int64_t k, const Epilogue& epilogue,
                        const GemvTuning& tuning, cudaStream_t stream) {
  if (tuning.depth == Shape::depth && tuning.row_tiles == Shape::row_tiles && tuning.pipeline == Shape::pipeline &&
      tuning.batch_invariant == Shape::batch_invariant) {
    if constexpr (Shape::pipeline == GemvPipeline::BulkStream) {
      static_assert(Shape::row_tiles == (Epilogue::kPairedTiles ? 2 : 1), "a stream tile is one part, or two paired");
      static_assert(!Shape::batch_invariant, "the bulk stream serves M <= 16 only");
      return launch_gemv_stream<Shape::depth>(segments, x, m, k, epilogue, tuning.warps, tuning.k_split, stream);
    } else {
      return launch_gemv_tokens<Format, Shape::row_tiles, Shape::depth, Shape::pipeline == GemvPipeline::AsyncCopy,
                                Shape::batch_invariant>(segments, x, m, k, epilogue, tuning.warps, tuning.k_split,
                                                        stream);
    }
  }
  if constexpr (sizeof...(Shapes) > 0) {
    return launch_gemv<Format, Shapes...>(segments, x, m, k, epilogue, tuning, stream);
  } else {
    return cudaErrorInvalidValue;
  }
}

}  // namespace uberlm::cuda
