#pragma once
// A kernel that only reads memory: the speed that any kernel reading the same bytes could reach, launch
// and ramp-up included. kernel_bench times it on each GEMV's weight bytes, so a GEMV's time is read
// against what its size allows, not only against the copy bandwidth of a 1 GiB buffer.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace uberlm::cuda {

// Reads bytes [data, data + bytes) (16-byte aligned, bytes a multiple of 16) and writes one word derived
// from them to *sink, so that the reads cannot be optimised away.
cudaError_t launch_read_probe(const void* data, size_t bytes, uint32_t* sink, cudaStream_t stream);

}  // namespace uberlm::cuda
