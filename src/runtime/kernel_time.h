#pragma once
// GPU time of one op class in a profiling pass (CudaBackend::take_profile, `uberlm bench`).
#include <cstdint>
#include <string>

namespace uberlm {

struct KernelTime {
  std::string op;
  double microseconds = 0;
  int64_t launches = 0;
};

}  // namespace uberlm
