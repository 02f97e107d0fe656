#pragma once
// Token choice on the GPU: greedy argmax over each row of logits, so a decode loop need not copy logits out.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

// logits: fp32 [rows, vocab]; tokens[r] = the smallest index of row r's maximum (as std::max_element).
cudaError_t launch_argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens, cudaStream_t stream);

}  // namespace uberlm::cuda
