#pragma once
// The NVFP4 weight order of the small-M wgmma GEMM (gemm_nvfp4_wgmma.cu), made once at load from the
// checkpoint's order: the weights are wgmma's A operand from registers, so each thread's 16-byte load must hold
// exactly its A fragments, and a warpgroup's share of a K chunk must be one contiguous bulk copy.
//
// The weight [N, K] (K a multiple of 64; N padded to a multiple of 64 with zero codes and scales) is cut into
// fragment tiles of 64 rows x 64 k-values, stored row tile after row tile, each row tile's K chunks in order: tile (r, c) at byte ((r * K / 64) + c) * 2560. A tile
// is 2048 bytes of codes, then 512 bytes of scales:
//   - codes: warp w (rows 16w .. 16w + 15 of the tile), lane l = 4g + t at byte (32w + l) * 16, four words; word
//     s (k-values 16s .. 16s + 15, one wgmma k-step and one NVFP4 scale block) holds, as its pairs 0..3 in the
//     GEMV's bit placement (nvfp4_gemv_layout.h), the k-value pairs (16s + 2t, +1) of row g, the same of row g + 8,
//     (16s + 2t + 8, +9) of row g, the same of row g + 8: the m16n8k16 A fragment registers a0a1 .. a6a7;
//   - scales: the 16 bytes at 2048 + (8w + g) * 16 are four words; word s holds the E4M3 scales of k-block s of
//     rows 16w + g (low half) and 16w + g + 8 (high half), each as the bf16 of scale * 2^119 (exact: E4M3 has 3
//     mantissa bits). The pair unpack gives e2m1 * 2^-126 (gemv_nvfp4.cuh), so one bf16 multiply makes the exact
//     e2m1 * e4m3 * 2^-7; converting the scales here saves the kernel ~36 instructions a chunk for 256 more bytes.
#include <cstdint>
#include <vector>

#ifdef UBERLM_WITH_CUDA
#include <cuda_runtime_api.h>

#include "core/nvfp4.h"
#endif

namespace uberlm::cuda {

inline constexpr int64_t kNvfp4WgmmaTileRows = 64;
inline constexpr int64_t kNvfp4WgmmaTileK = 64;
inline constexpr int64_t kNvfp4WgmmaTileCodeBytes = 2048;
inline constexpr int64_t kNvfp4WgmmaTileBytes = kNvfp4WgmmaTileCodeBytes + 512;

// Whether an [rows, cols] weight has this order (cols a multiple of 64), and its bytes (rows padded to 64).
bool nvfp4_wgmma_layout_fits(int64_t rows, int64_t cols);
int64_t nvfp4_wgmma_layout_bytes(int64_t rows, int64_t cols);

// packed: [rows, cols / 2] codes and scales: [rows, cols / 16] E4M3, both in the checkpoint's order -> the tiles.
// Throws uberlm::Error unless nvfp4_wgmma_layout_fits. The definition of the order on the host (tests, and the
// reference of launch_pack_nvfp4_for_wgmma).
std::vector<uint8_t> pack_nvfp4_for_wgmma(const uint8_t* packed, const uint8_t* scales, int64_t rows, int64_t cols);

#ifdef UBERLM_WITH_CUDA
// The same tiles on the GPU from a weight already on it in the GEMV's tiled order (what the backend holds after
// loading), into `tiles` (nvfp4_wgmma_layout_bytes, 16-byte aligned). cudaErrorInvalidValue unless it fits.
cudaError_t launch_pack_nvfp4_for_wgmma(const Nvfp4Weight& gemv_tiled, uint8_t* tiles, cudaStream_t stream);
#endif

}  // namespace uberlm::cuda
