#pragma once
// Embedding gather on the GPU. Launchers return the launch status (a .cpp caller wraps them in CUDA_CHECK).
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

// table: bf16 [vocab, dim]; tokens: [num_tokens], each in [0, vocab) (checked by the caller);
// x: fp32 [num_tokens, dim] = table[tokens] (embeddings are not scaled).
cudaError_t launch_embedding(const void* table, const int32_t* tokens, int64_t num_tokens, int64_t dim, float* x,
                             cudaStream_t stream);

}  // namespace uberlm::cuda
