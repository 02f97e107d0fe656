#include "ops/cpu/linear_nvfp4.h"

#include <vector>

#include "core/thread_pool.h"

namespace uberlm::cpu {

void linear_nvfp4(const float* x, int64_t m, const Nvfp4Weight& weight, float* y) {
  const int64_t n_rows = weight.rows, k_size = weight.cols;
  ThreadPool::global().parallel_for(n_rows, [&](int64_t begin, int64_t end) {
    std::vector<float> w_row(static_cast<size_t>(k_size));
    for (int64_t n = begin; n < end; ++n) {
      dequantize_nvfp4_row(weight, n, w_row.data());
      for (int64_t token = 0; token < m; ++token) {
        const float* x_row = x + token * k_size;
        float sum = 0.0f;
        for (int64_t k = 0; k < k_size; ++k) sum += x_row[k] * w_row[k];  // y[t, n] = sum_k x[t, k] W[n, k]
        y[token * n_rows + n] = sum;
      }
    }
  });
}

}  // namespace uberlm::cpu
