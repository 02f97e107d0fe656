#pragma once
// Which backend runs a model: the CPU reference, one GPU, or several (tensor parallelism), by the
// --device and --tensor-parallel choices. Apart from any one backend, so that none of them knows the others.
#include <memory>
#include <string>

#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"

namespace uberlm {

// Whether --device `device` ("cpu", "cuda" or "auto": cuda when cuda_device_present()) runs on a GPU.
bool runs_on_cuda(const std::string& device);

// device: "cpu", "cuda" or "auto" (cuda when cuda_device_present()). The CPU backend takes
// options.max_slots and options.prefix_snapshots; the CUDA backend all of options. tensor_parallel > 1: the model sharded over that many
// GPUs (CudaTensorParallelBackend, each rank with options), or over as many CPU rank threads
// (CpuTensorParallelBackend).
std::unique_ptr<Backend> make_backend(const Model& model, const std::string& device, const CudaBackendOptions& options,
                                      int tensor_parallel = 1);

#ifdef UBERLM_WITH_CUDA
// Random weights of a model shape made on the GPU(s): every decoder linear layer in `format`, lm_head bf16.
std::unique_ptr<GpuBackend> make_synthetic_backend(const ModelConfig& shape, SyntheticFormat format,
                                                   const CudaBackendOptions& options, uint64_t seed,
                                                   int tensor_parallel = 1);
#endif

}  // namespace uberlm
