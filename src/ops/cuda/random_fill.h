#pragma once
// Synthetic tensors made on the GPU (benchmarks of model shapes without a checkpoint): counter-based
// hashing, so a (seed, index) pair always gives the same value.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

// bf16 values uniform in [-scale, scale), never zero.
cudaError_t launch_fill_random_bf16(void* out, int64_t count, uint64_t seed, float scale, cudaStream_t stream);
// fp32 values uniform in [low, high).
cudaError_t launch_fill_random_f32(float* out, int64_t count, uint64_t seed, float low, float high,
                                   cudaStream_t stream);
// Bytes: uniformly random, then (byte & and_mask) | or_mask (E4M3 scales stay finite and non-zero).
cudaError_t launch_fill_random_bytes(uint8_t* out, int64_t count, uint64_t seed, uint8_t and_mask, uint8_t or_mask,
                                     cudaStream_t stream);

}  // namespace uberlm::cuda
