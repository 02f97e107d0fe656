#include <limits>

#include "ops/cuda/fused/gated_delta_net_layer.cuh"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/fused/gated_delta_net_layer_chunked.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
constexpr int kMaxConvKernel = 8;
// Threads sharing one value column j of S, each holding every kRowParts-th key row: four, so that a lone
// sequence's chain (its rows a thread) is short; in a decode step of many sequences, kManySequenceParts, so that
// a block has half the threads and registers and two sequences run at once on an SM (one thread a column,
// 128 rows a thread, spills at the three blocks an SM it would be for).
constexpr int kRowParts = 4;
constexpr int kManySequenceParts = 2;
constexpr int kManySequenceMaxKeyRows = 128;
// How a launch cuts the work (measured on the H100 at the 27B shape with 16-token windows throughout):
// a decode step (every chunk one token) runs a block per value head of up to 128 columns (the best of
// 32, 64 and 128 at batch 1 and 8), one token per window; longer chunks run column slices of 64 (ahead
// of 32 and 128 by 8% and 17% at prefill 2048) over windows of 16 tokens, on which the conv runs ahead
// of the delta rule and the cluster exchanges the norms' sums of squares in one barrier.
constexpr int kDecodeColumns = 128, kDecodeWindow = 1;
constexpr int kChunkColumns = 64, kChunkWindow = 16;

// Grid (chunk, value head, column slice); the slices of a head form one cluster (gated_delta_net_block).
template <int kRows, int kHistory, int kColumns, int kWindow, int kParts>
__global__ void __launch_bounds__(kColumns * kParts, kParts == kManySequenceParts ? 2 : 1)
    gated_delta_net_kernel(const float* __restrict__ qkv, const float* __restrict__ z, const float* __restrict__ a,
                           const float* __restrict__ b, GatedDeltaNetParams weights, DeviceChunks chunks,
                           int64_t skip_from, GatedDeltaNetDims dims, GatedDeltaNetState state, __nv_bfloat16* out,
                           int64_t out_stride) {
  gated_delta_net_block<kRows, kHistory, kColumns, kWindow, kParts>(
      qkv, z, a, b, weights, chunks, skip_from, dims, state, out, out_stride, blockIdx.x, blockIdx.y, blockIdx.z,
      gridDim.z, BeginDependentKernel{});
}

struct LaunchArgs {
  const float *qkv, *z, *a, *b;
  GatedDeltaNetParams weights;
  DeviceChunks chunks;
  int64_t skip_from;  // chunks this long or longer belong to the chunked kernel
  GatedDeltaNetDims dims;
  GatedDeltaNetState state;
  void* out;
  int64_t out_stride;
  cudaStream_t stream;
};

template <int kRows, int kHistory, int kColumns, int kWindow, int kParts = kRowParts>
cudaError_t launch_shape(const LaunchArgs& l) {
  const unsigned slices = blocks_for(l.dims.v_head_dim, kColumns);
  if (slices > kGatedDeltaNetMaxSlices) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(l.chunks.count), static_cast<unsigned>(l.dims.num_v_heads), slices);
  return launch_dependent_clusters(gated_delta_net_kernel<kRows, kHistory, kColumns, kWindow, kParts>, grid,
                                   kColumns * kParts, dim3(1, 1, slices), 0, l.stream, l.qkv, l.z, l.a, l.b,
                                   l.weights, l.chunks, l.skip_from, l.dims, l.state,
                                   static_cast<__nv_bfloat16*>(l.out), l.out_stride);
}

// Qwen3.5's conv kernel of 4 keeps 3 previous inputs per channel; larger kernels get room for 7.
template <int kRows>
cudaError_t launch_rows(const LaunchArgs& l, bool decode) {
  constexpr int kLong = kMaxConvKernel - 1;
  const bool short_conv = l.dims.conv_kernel <= 4;
  if (decode) {
    return short_conv ? launch_shape<kRows, 3, kDecodeColumns, kDecodeWindow>(l)
                      : launch_shape<kRows, kLong, kDecodeColumns, kDecodeWindow>(l);
  }
  return short_conv ? launch_shape<kRows, 3, kChunkColumns, kChunkWindow>(l)
                    : launch_shape<kRows, kLong, kChunkColumns, kChunkWindow>(l);
}
}  // namespace

bool gated_delta_net_decode_runs_many_sequence_blocks(const GatedDeltaNetDims& dims, GatedDeltaNetForm form,
                                                      int64_t tokens, int64_t chunks) {
  return form == GatedDeltaNetForm::ByChunkLength && tokens == chunks && chunks >= kManySequenceMinChunks &&
         dims.k_head_dim <= kManySequenceMaxKeyRows && dims.conv_kernel <= 4;
}

bool gated_delta_net_chunk_runs_chunked(const GatedDeltaNetDims& dims, bool decode_step, int64_t length) {
  return !decode_step && gated_delta_net_chunked_supports(dims) && length >= kChunkedDeltaRuleMinTokens;
}

cudaError_t launch_gated_delta_net_layer(const float* qkv, const float* z, const float* a, const float* b,
                                   const GatedDeltaNetParams& weights, const DeviceChunks& chunks, int64_t tokens,
                                   ChunkLengths lengths, GatedDeltaNetForm form, const GatedDeltaNetDims& dims,
                                   const GatedDeltaNetState& state, GatedDeltaNetScratch scratch, void* out,
                                   int64_t out_stride, cudaStream_t stream) {
  if (chunks.count == 0) return cudaSuccess;
  if (dims.num_k_heads < 1 || dims.num_v_heads % dims.num_k_heads != 0) return cudaErrorInvalidValue;
  if (dims.conv_kernel < 2 || dims.conv_kernel > kMaxConvKernel) return cudaErrorInvalidValue;
  if (dims.v_head_dim < 1 || dims.v_head_dim > kGatedDeltaNetMaxSlices * kChunkColumns) return cudaErrorInvalidValue;
  // Chunks of chunked_from tokens or more run chunked, the others token by token; each kernel's blocks
  // return at once on the other's chunks.
  const bool decode_shape = gated_delta_net_runs_decode_shape(tokens, chunks.count, form);
  const int64_t chunked_from = gated_delta_net_chunk_runs_chunked(dims, decode_shape, lengths.longest)
                                   ? kChunkedDeltaRuleMinTokens
                                   : std::numeric_limits<int64_t>::max();
  if (lengths.longest >= chunked_from) {
    const cudaError_t status =
        detail::launch_gated_delta_net_layer_chunked(qkv, z, a, b, weights, chunks, tokens, lengths.longest, chunked_from,
                                                     dims, state, scratch, out, out_stride, stream);
    if (status != cudaSuccess || lengths.shortest >= chunked_from) return status;
  }
  const LaunchArgs args{qkv, z, a, b, weights, chunks, chunked_from, dims, state, out, out_stride, stream};
  const int dk = dims.k_head_dim;
  if (gated_delta_net_decode_runs_many_sequence_blocks(dims, form, tokens, chunks.count)) {
    constexpr int kRows = kManySequenceMaxKeyRows / kManySequenceParts;
    return dk <= kRows ? launch_shape<kRows / 2, 3, kDecodeColumns, kDecodeWindow, kManySequenceParts>(args)
                       : launch_shape<kRows, 3, kDecodeColumns, kDecodeWindow, kManySequenceParts>(args);
  }
  if (dk <= 8 * kRowParts) return launch_rows<8>(args, decode_shape);
  if (dk <= 16 * kRowParts) return launch_rows<16>(args, decode_shape);
  if (dk <= 32 * kRowParts) return launch_rows<32>(args, decode_shape);
  if (dk <= 64 * kRowParts) return launch_rows<64>(args, decode_shape);
  return cudaErrorInvalidValue;
}

}  // namespace uberlm::cuda
