#pragma once
// Host API of the decode GEMV / small-M GEMM: y[M, N] = x[M, K] . W^T for M = 1..64, bf16 activations,
// fp32 accumulation, fp32 or bf16 output. All pointers are device pointers; the work is queued on
// `stream`. Shapes or alignments the kernels cannot do throw uberlm::Error before anything runs.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/nvfp4.h"

namespace uberlm::cuda {

inline constexpr int64_t kGemvMaxM = 64;
inline constexpr int64_t kGemvKMultiple = 32;

// Where a GEMV's weight loads in flight wait: in registers (each lane's own loads), in shared memory
// filled by cp.async (each warp's own ring, no registers held), or in a block's shared-memory ring filled
// by the bulk-copy engine (gemv_stream.cuh: NVFP4, M <= 16, K a multiple of 256; Hopper).
enum class GemvPipeline { Registers, AsyncCopy, BulkStream };

// A launch shape: warps per block, weight loads in flight per row per lane (pipeline depth, in 128-wide
// k-chunks), 16-row tiles per warp, and how many of the block's warps split K (their partial sums are
// added in a fixed order); the other factor of warps / k_split takes more rows. For BulkStream: warps
// multiply (one more copies), depth is the ring's stages (512-wide), row_tiles 1 (2 with the paired
// gate/up), and k_split blocks of a cluster split each tile's K. batch_invariant: one accumulator chain
// at every M (others take two at small M, see gemv_tile.cuh). A token's sums are then added in an order set
// by k_split alone (the warps, depth, row tiles and pipeline move data, not arithmetic), so batch-invariant
// tunings of one k_split give a token the same bits whatever M is and whichever of them runs: the
// --deterministic path runs one per cell at every M (runtime/cuda/linear.h; without a table the built-in
// gemv_*_batch_invariant_tuning, one K split per K).
struct GemvTuning {
  int warps = 4;
  int depth = 4;
  int row_tiles = 1;
  int k_split = 4;
  GemvPipeline pipeline = GemvPipeline::Registers;
  bool batch_invariant = false;
};

// The bulk stream's limits (gemv_stream.cuh): tokens per launch, the multiple of K (a row's scales, K/16
// bytes, must be whole 16-byte copy rows), consumer warps per block (one more produces), blocks per cluster.
inline constexpr int64_t kGemvStreamMaxM = 16;
inline constexpr int64_t kGemvStreamKMultiple = 256;
inline constexpr int kGemvStreamMaxWarps = 8;
inline constexpr int kGemvStreamMaxCluster = 4;

// Whether a tuning's kernel can run m tokens of an [n, k] NVFP4 weight (the bulk stream's limits); the
// launches reject the others with an error naming the limit.
bool gemv_nvfp4_tuning_applies(const GemvTuning& tuning, int64_t m, int64_t k);

// weight: NVFP4 [N, K] (K < 2^31) (packed 16-byte aligned, scales 2-byte aligned); x: bf16 [m, K], 16-byte
// aligned; y: [m, N] of y_dtype (F32 or BF16).
void gemv_nvfp4(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype, cudaStream_t stream);

// weight: bf16 [n, k], 16-byte aligned; otherwise as gemv_nvfp4.
void gemv_bf16(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
               cudaStream_t stream);

// Several weights that read the same activations (q/k/v, gate/up, the Gated DeltaNet input projections)
// in one launch: target i gets y_i[m, N_i] = x . W_i^T. 1..kGemvMaxTargets targets of one K; one launch
// instead of several saves the launch gaps and fills the GPU with one grid.
inline constexpr int kGemvMaxTargets = 4;
struct Nvfp4GemvTarget {
  Nvfp4Weight weight;
  void* y;
};
struct Bf16GemvTarget {
  const void* weight;  // bf16 [n, k]
  int64_t n;
  void* y;
};
void gemv_nvfp4_multi(const Nvfp4GemvTarget* targets, int count, const void* x, int64_t m, DType y_dtype,
                      cudaStream_t stream);
void gemv_bf16_multi(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int64_t m, DType y_dtype,
                     cudaStream_t stream);

// The MLP's gate and up projections with SwiGLU fused into the GEMV's epilogue: gate and up are weights
// of one format and equal shape [n, K]; out: bf16 rows of out_stride >= n elements (16-byte alignment
// not needed), out[t, j] = silu(g) * up_t,j for t < m, j < n, where g and up_t,j are the fp32 values
// gemv_*_multi would write for the pair, rounded to bf16 as launch_swiglu rounds: one launch instead of
// two, and the same bits (tests/gpu/gemv_test.cpp checks it). Other elements of out are not written.
// Each warp's two row tiles are the same 16 rows of gate and up ("paired"), so the launch runs the
// two-row-tile variant of the plain tuning for the pair (gemv_paired_tuning).
void gemv_nvfp4_swiglu(const Nvfp4Weight& gate, const Nvfp4Weight& up, const void* x, int64_t m, void* out,
                       int64_t out_stride, cudaStream_t stream);
void gemv_bf16_swiglu(const void* gate, const void* up, int64_t n, int64_t k, const void* x, int64_t m, void* out,
                      int64_t out_stride, cudaStream_t stream);

// The tuning the plain calls above use for an [n, k] weight and m tokens.
GemvTuning gemv_nvfp4_default_tuning(int64_t m, int64_t n, int64_t k);
GemvTuning gemv_bf16_default_tuning(int64_t m, int64_t n, int64_t k);
// The batch-invariant tuning of each format for m tokens of an [n, k] weight: the defaults' shapes with one
// chain, their K split fixed by k alone, so every m gets the bits of every other.
GemvTuning gemv_nvfp4_batch_invariant_tuning(int64_t m, int64_t k);
GemvTuning gemv_bf16_batch_invariant_tuning(int64_t m);
// The paired launch's tuning for a plain one: the same warps, depth, K split and pipeline with two row
// tiles. A paired warp needs one tile of gate and one of up, so a plain tuning of one row tile (as the
// defaults or a tuning table may name for some M) maps to its two-tile variant, which is compiled for
// every plain shape.
GemvTuning gemv_paired_tuning(const GemvTuning& plain);
// Every compiled tuning, for kernel_bench's sweep and the GPU tests.
std::vector<GemvTuning> gemv_nvfp4_tunings();
std::vector<GemvTuning> gemv_bf16_tunings();
std::vector<GemvTuning> gemv_nvfp4_paired_tunings();
std::vector<GemvTuning> gemv_bf16_paired_tunings();
// A tuning's name, e.g. "w4_d2_r2_k4", "w4_d4_r2_k4_async" or "w4_d4_r2_k4_async_inv" (batch-invariant), and
// back (nullopt for a malformed name).
std::string gemv_tuning_name(const GemvTuning& tuning);
std::optional<GemvTuning> parse_gemv_tuning(const std::string& name);
// As gemv_nvfp4 / gemv_bf16 / the _multi / the _swiglu calls with an explicit tuning from the lists above
// (others throw).
void gemv_nvfp4_multi_tuned(const Nvfp4GemvTarget* targets, int count, const void* x, int64_t m, DType y_dtype,
                            const GemvTuning& tuning, cudaStream_t stream);
void gemv_bf16_multi_tuned(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int64_t m, DType y_dtype,
                           const GemvTuning& tuning, cudaStream_t stream);
void gemv_nvfp4_tuned(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype,
                      const GemvTuning& tuning, cudaStream_t stream);
void gemv_bf16_tuned(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
                     const GemvTuning& tuning, cudaStream_t stream);
void gemv_nvfp4_swiglu_tuned(const Nvfp4Weight& gate, const Nvfp4Weight& up, const void* x, int64_t m, void* out,
                             int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream);
void gemv_bf16_swiglu_tuned(const void* gate, const void* up, int64_t n, int64_t k, const void* x, int64_t m, void* out,
                            int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream);

namespace detail {
// The kernel launches (gemv_nvfp4.cu, gemv_bf16.cu), called after gemv.cpp's checks; they return the
// launch status. Kept apart because nvcc cannot compile fmt, which the error path uses.
// (depth, row tiles, pipeline) shapes compiled into the kernels; the launches answer cudaErrorInvalidValue for others.
inline constexpr GemvPipeline kRegisters = GemvPipeline::Registers, kAsync = GemvPipeline::AsyncCopy,
                               kStream = GemvPipeline::BulkStream;
inline constexpr GemvTuning kGemvNvfp4Shapes[] = {
    {0, 4, 1, 0, kRegisters}, {0, 8, 1, 0, kRegisters}, {0, 2, 2, 0, kRegisters}, {0, 4, 2, 0, kRegisters},
    {0, 4, 2, 0, kAsync},     {0, 8, 2, 0, kAsync},     {0, 8, 1, 0, kAsync},     {0, 4, 1, 0, kAsync},
    {0, 8, 1, 0, kStream},
    {0, 12, 1, 0, kStream},   {0, 2, 2, 0, kRegisters, true}, {0, 4, 2, 0, kAsync, true}};
inline constexpr GemvTuning kGemvBf16Shapes[] = {{0, 2, 1, 0, kRegisters},
                                                 {0, 1, 2, 0, kRegisters},
                                                 {0, 2, 1, 0, kRegisters, true},
                                                 {0, 1, 2, 0, kRegisters, true}};
// The paired (SwiGLU epilogue) kernels: the two-row-tile variant of every shape above (gemv.cpp checks).
inline constexpr GemvTuning kGemvNvfp4PairedShapes[] = {{0, 2, 2, 0, kRegisters}, {0, 4, 2, 0, kRegisters},
                                                        {0, 8, 2, 0, kRegisters}, {0, 4, 2, 0, kAsync},
                                                        {0, 8, 2, 0, kAsync},     {0, 8, 2, 0, kStream},
                                                        {0, 12, 2, 0, kStream},   {0, 2, 2, 0, kRegisters, true},
                                                        {0, 4, 2, 0, kAsync, true}};
inline constexpr GemvTuning kGemvBf16PairedShapes[] = {{0, 2, 2, 0, kRegisters},
                                                       {0, 1, 2, 0, kRegisters},
                                                       {0, 2, 2, 0, kRegisters, true},
                                                       {0, 1, 2, 0, kRegisters, true}};
cudaError_t launch_gemv_nvfp4(const Nvfp4GemvTarget* targets, int count, const void* x, int m, bool y_is_bf16,
                              const GemvTuning& tuning, cudaStream_t stream);
cudaError_t launch_gemv_bf16(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int m,
                             bool y_is_bf16, const GemvTuning& tuning, cudaStream_t stream);
cudaError_t launch_gemv_nvfp4_swiglu(const Nvfp4Weight& gate, const Nvfp4Weight& up, const void* x, int m, void* out,
                                     int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream);
cudaError_t launch_gemv_bf16_swiglu(const void* gate, const void* up, int64_t n, int64_t k, const void* x, int m,
                                    void* out, int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream);
}  // namespace detail

}  // namespace uberlm::cuda
