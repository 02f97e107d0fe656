#pragma once
// Copies of the caches a sequence holds on the GPU:
//  - read back in the CPU decoder's layout (`uberlm check`): the KV entries of one chunk's new positions
//    (through its block table), the Gated DeltaNet conv history (the last kernel - 1 inputs, oldest first,
//    out of the ring by position) and recurrent state of its slot;
//  - prefix snapshots (SequenceChunk::prefix_save_snapshot): a slot's Gated DeltaNet states copied to a
//    snapshot and back, device to device, every layer's after a run or one layer's between a run's tokens. The prefix's keys and values need no copy: they stay in the KV blocks the scheduler
//    holds for it.
#include <cuda_runtime_api.h>

#include "model/config.h"
#include "model/forward_batch.h"
#include "runtime/cuda/step_buffers.h"

namespace uberlm::gpu {

// Fills keys, values, conv_state and recurrent_state of snapshot.layers (sized to the layers) after the
// forward that ran `chunk` on `stream` (waits for it).
void read_cache_snapshot(const ModelConfig& config, const DeviceCaches& caches, const SequenceChunk& chunk,
                         cudaStream_t stream, ForwardSnapshot& snapshot);

// Queue on `stream`, so that they run between the forwards queued there: save copies slot `slot`'s conv ring
// and recurrent state of every Gated DeltaNet layer to snapshot `snapshot`, restore copies them back into
// `slot`. The conv ring is copied whole: its entries are indexed by absolute position, and the restored
// slot continues at the prefix's length as the saving one would have. Ids are the caller's to check.
void save_prefix_states(const ModelConfig& config, const DeviceCaches& caches, int slot, int snapshot,
                        cudaStream_t stream);
// save_prefix_states of Gated DeltaNet layer `layer` alone.
void save_prefix_layer_states(const ModelConfig& config, const DeviceCaches& caches, int layer, int slot, int snapshot,
                              cudaStream_t stream);
void restore_prefix_states(const ModelConfig& config, const DeviceCaches& caches, int snapshot, int slot,
                           cudaStream_t stream);

}  // namespace uberlm::gpu
