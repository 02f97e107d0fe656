#pragma once
// Token choice on the GPU: greedy argmax over each row of logits, so a decode loop need not copy logits out.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

// Per-row state of one argmax launch: the best (value, index) key found so far and how many blocks of the
// row have finished. Must be zero before the first launch; every launch leaves it zero again.
struct ArgmaxScratch {
  unsigned long long best_key;
  unsigned arrivals;
};

// logits: fp32 [rows, vocab]; tokens[r] = the smallest index of row r's maximum (as std::max_element);
// NaN never wins, and a row of only NaN gives 0. scratch: `rows` zeroed ArgmaxScratch.
cudaError_t launch_argmax(const float* logits, int64_t rows, int64_t vocab, ArgmaxScratch* scratch, int32_t* tokens,
                          cudaStream_t stream);

}  // namespace uberlm::cuda
