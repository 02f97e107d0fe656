#pragma once
// Pointer alignment, for the launchers' argument checks and their choice of vector widths (host code, in .cpp
// and .cu files alike).
#include <cstdint>

namespace uberlm::cuda {

inline bool aligned(const void* pointer, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(pointer) % bytes == 0; }

}  // namespace uberlm::cuda
