#include "runtime/backend_factory.h"

#include "core/error.h"
#include "runtime/cpu_backend.h"
#include "runtime/cpu_tensor_parallel_backend.h"
#include "runtime/cuda_tensor_parallel_backend.h"

namespace uberlm {

bool runs_on_cuda(const std::string& device) {
  if (device != "cpu" && device != "cuda" && device != "auto") fail("--device {}: expected cpu, cuda or auto", device);
  return device == "cuda" || (device == "auto" && cuda_device_present());
}

std::unique_ptr<Backend> make_backend(const Model& model, const std::string& device, const CudaBackendOptions& options,
                                      int tensor_parallel) {
  if (tensor_parallel < 1) fail("--tensor-parallel {}: expected at least 1", tensor_parallel);
  if (!runs_on_cuda(device)) {
    if (options.decode_path == DecodePath::Fused) {
      fail("--decode-path fused: the fused kernels run on the CUDA backend, and this run is on the CPU (--device {})",
           device);
    }
    if (tensor_parallel > 1) {
      return std::make_unique<CpuTensorParallelBackend>(model, options.max_slots, tensor_parallel, options.prefix_snapshots);
    }
    return std::make_unique<CpuBackend>(model, options.max_slots, options.prefix_snapshots);
  }
#ifdef UBERLM_WITH_CUDA
  if (!cuda_device_present()) fail("--device cuda: no CUDA device is visible");
  if (tensor_parallel > 1) return std::make_unique<CudaTensorParallelBackend>(model, tensor_parallel, options);
  return std::make_unique<CudaBackend>(model, options);
#else
  fail("--device cuda: this binary was built without CUDA");
#endif
}

#ifdef UBERLM_WITH_CUDA
std::unique_ptr<GpuBackend> make_synthetic_backend(const ModelConfig& shape, SyntheticFormat format,
                                                   const CudaBackendOptions& options, uint64_t seed,
                                                   int tensor_parallel) {
  if (!cuda_device_present()) fail("synthetic weights are made on the GPU, and no CUDA device is visible");
  if (tensor_parallel > 1) {
    return std::make_unique<CudaTensorParallelBackend>(shape, format, tensor_parallel, options, seed);
  }
  return std::make_unique<CudaBackend>(shape, format, options, seed);
}
#endif

}  // namespace uberlm
