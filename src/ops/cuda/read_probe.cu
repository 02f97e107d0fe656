#include "ops/cuda/read_probe.h"

#include "ops/cuda/device_capability.h"
#include "ops/cuda/gemv_tile.cuh"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {
namespace {

constexpr int kThreads = 512, kLoadsInFlight = 8;

// Each thread keeps kLoadsInFlight 16-byte loads in flight, strided by the whole grid so that every
// request of a warp is one coalesced 512-byte line.
__global__ void __launch_bounds__(kThreads) read_probe_kernel(const uint4* __restrict__ data, size_t count,
                                                              uint32_t* sink) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  for (size_t base = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; base < count;
       base += stride * kLoadsInFlight) {
    uint4 v[kLoadsInFlight];
#pragma unroll
    for (int i = 0; i < kLoadsInFlight; ++i) {
      const size_t index = base + i * stride;
      v[i] = index < count ? load_streaming_16(data + index) : uint4{0, 0, 0, 0};
    }
#pragma unroll
    for (int i = 0; i < kLoadsInFlight; ++i) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // practically never taken; the loads must still happen
}

}  // namespace

cudaError_t launch_read_probe(const void* data, size_t bytes, uint32_t* sink, cudaStream_t stream) {
  int sms = 0;
  const cudaError_t status = current_device_sm_count(sms);
  if (status != cudaSuccess) return status;
  const size_t count = bytes / 16;
  const size_t blocks_needed = (count + size_t{kThreads} * kLoadsInFlight - 1) / (size_t{kThreads} * kLoadsInFlight);
  const unsigned blocks = static_cast<unsigned>(blocks_needed < size_t(4) * sms ? blocks_needed : size_t(4) * sms);
  read_probe_kernel<<<blocks > 0 ? blocks : 1, kThreads, 0, stream>>>(static_cast<const uint4*>(data), count, sink);
  return cudaGetLastError();
}

}  // namespace uberlm::cuda
