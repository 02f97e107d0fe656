#include "ops/cuda/embedding.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
// One block per token; threads stride over the row.
__global__ void embedding_kernel(const __nv_bfloat16* table, const int32_t* tokens, int64_t dim, float* x) {
  begin_dependent_kernel();
  const int64_t t = blockIdx.x;
  const __nv_bfloat16* row = table + static_cast<int64_t>(tokens[t]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) x[t * dim + i] = __bfloat162float(row[i]);
}
}  // namespace

cudaError_t launch_embedding(const void* table, const int32_t* tokens, int64_t num_tokens, int64_t dim, float* x,
                             cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  return launch_dependent(embedding_kernel, static_cast<unsigned>(num_tokens), 256, 0, stream,
                          static_cast<const __nv_bfloat16*>(table), tokens, dim, x);
}

}  // namespace uberlm::cuda
