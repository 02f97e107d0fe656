#pragma once
// What the current CUDA device is, for kernels built for one architecture only (Hopper's sm_90a code).

namespace uberlm::cuda {

// Whether the current device has compute capability 9.0 (false when there is none or it cannot be asked).
bool current_device_is_sm90();

}  // namespace uberlm::cuda
