#pragma once
// The chunked kernel behind launch_gated_delta_net_layer for steps that are not pure decode (see
// gated_delta_net_layer.h); tested through it.
#include "ops/cuda/fused/gated_delta_net_layer.h"

namespace uberlm::cuda::detail {

// launch_gated_delta_net_layer's contract, every chunk in the chunked form; ring_readers is not used.
cudaError_t launch_gated_delta_net_layer_chunked(const float* qkv, const float* z, const float* a, const float* b,
                                                 const GatedDeltaNetParams& weights, const DeviceChunks& chunks,
                                                 const GatedDeltaNetDims& dims, const GatedDeltaNetState& state,
                                                 void* out, int64_t out_stride, cudaStream_t stream);

}  // namespace uberlm::cuda::detail
