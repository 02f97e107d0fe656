#pragma once
// The chunked kernel behind launch_gated_delta_net_layer for steps that are not pure decode (see
// gated_delta_net_layer.h); tested through it.
#include "ops/cuda/fused/gated_delta_net_layer.h"

namespace uberlm::cuda::detail {

// launch_gated_delta_net_layer's contract for the chunks of min_length tokens or more (the others are left
// to the token-by-token kernel); ring_readers is not used. tokens: the step's; longest: its longest chunk.
cudaError_t launch_gated_delta_net_layer_chunked(const float* qkv, const float* z, const float* a, const float* b,
                                                 const GatedDeltaNetParams& weights, const DeviceChunks& chunks,
                                                 int64_t tokens, int64_t longest, int64_t min_length,
                                                 const GatedDeltaNetDims& dims, const GatedDeltaNetState& state,
                                                 GatedDeltaNetScratch scratch, void* out, int64_t out_stride,
                                                 cudaStream_t stream);

}  // namespace uberlm::cuda::detail
