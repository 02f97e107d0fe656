#pragma once
// What the current CUDA device is, for kernels built for one architecture only (Hopper's sm_90a code).

#include <cuda_runtime_api.h>

namespace uberlm::cuda {

// Whether the current device has compute capability 9.0 (false when there is none or it cannot be asked).
bool current_device_is_sm90();
// The current device's SM count into `sms` (the status of asking for it).
cudaError_t current_device_sm_count(int& sms);

}  // namespace uberlm::cuda
