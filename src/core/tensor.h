#pragma once
// A non-owning view of a dense row-major tensor (checkpoint mmap, host buffer or device buffer).
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace uberlm {

struct TensorView {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

std::string shape_string(const std::vector<int64_t>& shape);

// Converts any float dtype (F32, F16, BF16, F8_E4M3) to fp32; `out` holds numel() floats.
void to_f32(const TensorView& tensor, float* out);
std::vector<float> to_f32(const TensorView& tensor);

}  // namespace uberlm
