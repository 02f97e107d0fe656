// The MLP's gate/up GEMV with SwiGLU in its epilogue (paired row tiles: gemv_tile.cuh's GemvSwigluEpilogue),
// for NVFP4 and bf16 weights: one launch for gate_proj, up_proj and silu(gate) * up, with the bits of the
// unfused gemv_*_multi + launch_swiglu (tests/gpu/fused_kernels_test.cpp). Apart from gemv_nvfp4.cu so that
// the two sets of kernel instances compile in parallel.
#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_bf16.cuh"
#include "ops/cuda/gemv_launch.cuh"
#include "ops/cuda/gemv_nvfp4.cuh"

namespace uberlm::cuda::detail {

cudaError_t launch_gemv_nvfp4_swiglu(const Nvfp4Weight& gate, const Nvfp4Weight& up, const void* x, int m, void* out,
                                     int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream) {
  GemvSegments<Nvfp4Format> segments{};
  segments.add(nvfp4_format(gate), gate.rows, nullptr);
  segments.add(nvfp4_format(up), up.rows, nullptr);
  constexpr GemvPipeline kAsync = GemvPipeline::AsyncCopy, kStream = GemvPipeline::BulkStream;
  return launch_gemv<Nvfp4Format, GemvShape<2, 2>, GemvShape<4, 2>, GemvShape<8, 2>, GemvShape<4, 2, kAsync>,
                    GemvShape<8, 2, kAsync>, GemvShape<8, 2, kStream>, GemvShape<12, 2, kStream>,
                    GemvShape<2, 2, GemvPipeline::Registers, true>, GemvShape<4, 2, kAsync, true>>(
      segments, x, m, gate.cols, GemvSwigluEpilogue{static_cast<__nv_bfloat16*>(out), out_stride}, tuning, stream);
}

cudaError_t launch_gemv_bf16_swiglu(const void* gate, const void* up, int64_t n, int64_t k, const void* x, int m,
                                    void* out, int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream) {
  GemvSegments<Bf16Format> segments{};
  segments.add({static_cast<const __nv_bfloat16*>(gate), k, 1.0f}, n, nullptr);
  segments.add({static_cast<const __nv_bfloat16*>(up), k, 1.0f}, n, nullptr);
  constexpr GemvPipeline kRegisters = GemvPipeline::Registers;
  return launch_gemv<Bf16Format, GemvShape<2, 2>, GemvShape<1, 2>, GemvShape<2, 2, kRegisters, true>,
                     GemvShape<1, 2, kRegisters, true>>(
      segments, x, m, k, GemvSwigluEpilogue{static_cast<__nv_bfloat16*>(out), out_stride}, tuning, stream);
}

}  // namespace uberlm::cuda::detail
