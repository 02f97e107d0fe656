#pragma once
// The one harness of the fused-kernel tests (ops/cuda/fused/): each case builds fresh random inputs (never
// zeros), runs the fused kernel into poisoned outputs and the unfused ops it replaces on the same inputs,
// and returns the tensors to compare; the harness compares each with the tolerance the case states and
// fails a kernel whose cases compared nothing.
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace uberlm::gpu_test {

// One tensor the fused kernel wrote, beside what the unfused ops give. tolerance: the bound on
// max|fused - unfused| / max|unfused| (every element finite); 0 asks for equal values.
struct FusedOutput {
  std::string tensor;
  std::vector<float> fused, unfused;
  double tolerance;
};

struct FusedCase {
  std::string name;
  std::function<std::vector<FusedOutput>()> run;
};

inline void check_fused_kernel(const std::string& kernel, const std::vector<FusedCase>& cases) {
  int64_t compared = 0;
  for (const FusedCase& c : cases) {
    for (const FusedOutput& out : c.run()) {
      const std::string label = kernel + " / " + c.name + " / " + out.tensor;
      if (out.tolerance == 0) {
        EXPECT_EQ(out.fused.size(), out.unfused.size()) << label;
        EXPECT_TRUE(out.fused == out.unfused) << label << ": fused differs from unfused";
        compared += static_cast<int64_t>(out.unfused.size());
      } else {
        compared += expect_close(out.fused, out.unfused, out.tolerance, label);
        // The measured errors, which the tolerances stated in the tests are set from.
        std::printf("%s: max|fused-unfused|/max|unfused| = %.3g (tolerance %.3g)\n", label.c_str(),
                    max_relative_error(out.fused, out.unfused), out.tolerance);
      }
    }
  }
  EXPECT_GT(compared, 0) << kernel << ": the cases compared no element";
}

}  // namespace uberlm::gpu_test
