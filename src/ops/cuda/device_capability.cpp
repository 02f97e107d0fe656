#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/device_capability.h"

#include <cuda_runtime_api.h>

namespace uberlm::cuda {

bool current_device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
         minor == 0;
}

cudaError_t current_device_sm_count(int& sms) {
  int device = 0;
  const cudaError_t status = cudaGetDevice(&device);
  return status != cudaSuccess ? status : cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
}

}  // namespace uberlm::cuda
#endif
