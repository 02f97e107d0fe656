#include "runtime/cuda/cache_snapshot.h"

#include <vector>

#include "core/dtype.h"
#include "ops/cuda/cuda_check.h"
#include "runtime/backend.h"

namespace uberlm::gpu {

namespace {

template <typename T>
std::vector<T> download(const T* device, int64_t count, cudaStream_t stream) {
  std::vector<T> host(count);
  CUDA_CHECK(cudaMemcpyAsync(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

// Position p's row of a paged bf16 pool, as fp32.
std::vector<float> kv_row(const uint16_t* pool, const SequenceChunk& chunk, int64_t p, int64_t width,
                          cudaStream_t stream) {
  const int64_t block = chunk.block_table.at(p / kKvBlockSize);
  const std::vector<uint16_t> bits = download(pool + (block * kKvBlockSize + p % kKvBlockSize) * width, width, stream);
  std::vector<float> row(width);
  for (int64_t i = 0; i < width; ++i) row[i] = bf16_to_f32(bits[i]);
  return row;
}

enum class PrefixCopy { SlotToSnapshot, SnapshotToSlot };

void copy_layer_prefix_states(const ModelConfig& c, const LayerCaches& cache, int slot, int snapshot,
                              PrefixCopy direction, cudaStream_t stream) {
  const auto copy = [&](float* slots, float* snapshots, int64_t floats) {
    float* in_slot = slots + slot * floats;
    float* in_snapshot = snapshots + snapshot * floats;
    const bool saving = direction == PrefixCopy::SlotToSnapshot;
    CUDA_CHECK(cudaMemcpyAsync(saving ? in_snapshot : in_slot, saving ? in_slot : in_snapshot, floats * sizeof(float),
                               cudaMemcpyDeviceToDevice, stream));
  };
  copy(cache.conv_state, cache.conv_snapshots, conv_state_floats(c));
  copy(cache.recurrent_state, cache.recurrent_snapshots, recurrent_state_floats(c));
}

void copy_prefix_states(const ModelConfig& c, const DeviceCaches& caches, int slot, int snapshot, PrefixCopy direction,
                        cudaStream_t stream) {
  for (int layer = 0; layer < c.num_layers; ++layer) {
    if (c.layer_kinds[layer] != LayerKind::GatedDeltaNet) continue;
    copy_layer_prefix_states(c, caches.layers[layer], slot, snapshot, direction, stream);
  }
}

}  // namespace

void read_cache_snapshot(const ModelConfig& c, const DeviceCaches& caches, const SequenceChunk& chunk,
                         cudaStream_t stream, ForwardSnapshot& snapshot) {
  const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const int64_t end = chunk.start + chunk.num_tokens, kernel = c.delta_net_conv_kernel, conv_dim = c.delta_net_conv_dim();
  const int64_t state = recurrent_state_floats(c);
  for (int layer = 0; layer < c.num_layers; ++layer) {
    LayerSnapshot& s = snapshot.layers.at(layer);
    const LayerCaches& cache = caches.layers[layer];
    if (c.layer_kinds[layer] == LayerKind::FullAttention) {
      for (int64_t p = chunk.start; p < end; ++p) {
        const std::vector<float> key = kv_row(cache.key_cache, chunk, p, kv_width, stream);
        const std::vector<float> value = kv_row(cache.value_cache, chunk, p, kv_width, stream);
        s.keys.insert(s.keys.end(), key.begin(), key.end());
        s.values.insert(s.values.end(), value.begin(), value.end());
      }
      continue;
    }
    // Ring entry p % kernel holds the input of position p (step_buffers.h); positions before 0 are zero.
    const std::vector<float> ring = download(cache.conv_state + chunk.slot * kernel * conv_dim, kernel * conv_dim, stream);
    s.conv_state.assign(conv_dim * (kernel - 1), 0.0f);
    for (int64_t j = 0; j < kernel - 1; ++j) {
      const int64_t p = end - (kernel - 1) + j;
      if (p < 0) continue;
      for (int64_t ch = 0; ch < conv_dim; ++ch) s.conv_state[ch * (kernel - 1) + j] = ring[(p % kernel) * conv_dim + ch];
    }
    s.recurrent_state = download(cache.recurrent_state + chunk.slot * state, state, stream);
  }
}

void save_prefix_states(const ModelConfig& c, const DeviceCaches& caches, int slot, int snapshot, cudaStream_t stream) {
  copy_prefix_states(c, caches, slot, snapshot, PrefixCopy::SlotToSnapshot, stream);
}

void save_prefix_layer_states(const ModelConfig& c, const DeviceCaches& caches, int layer, int slot, int snapshot,
                              cudaStream_t stream) {
  copy_layer_prefix_states(c, caches.layers.at(layer), slot, snapshot, PrefixCopy::SlotToSnapshot, stream);
}

void restore_prefix_states(const ModelConfig& c, const DeviceCaches& caches, int snapshot, int slot,
                           cudaStream_t stream) {
  copy_prefix_states(c, caches, slot, snapshot, PrefixCopy::SnapshotToSlot, stream);
}

}  // namespace uberlm::gpu
