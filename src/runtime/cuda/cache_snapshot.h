#pragma once
// The caches one chunk's sequence holds on the GPU, read back in the CPU decoder's layout (`uberlm check`):
// the KV entries of its new positions (through its block table), the Gated DeltaNet conv history (the last
// kernel - 1 inputs, oldest first, out of the ring by position) and recurrent state of its slot.
#include <cuda_runtime_api.h>

#include "model/config.h"
#include "model/forward_batch.h"
#include "runtime/cuda/step_buffers.h"

namespace uberlm::gpu {

// Fills keys, values, conv_state and recurrent_state of snapshot.layers (sized to the layers) after the
// forward that ran `chunk` on `stream` (waits for it).
void read_cache_snapshot(const ModelConfig& config, const DeviceCaches& caches, const SequenceChunk& chunk,
                         cudaStream_t stream, ForwardSnapshot& snapshot);

}  // namespace uberlm::gpu
