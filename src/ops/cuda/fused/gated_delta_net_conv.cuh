#pragma once
// The causal conv1d inside both forms of the fused Gated DeltaNet op (gated_delta_net_layer.cu and
// gated_delta_net_layer_chunked.cu): a thread keeps each of its staged channels' weights and last inputs
// in registers across a chunk's tokens.
#include "ops/cuda/fused/gated_delta_net_layer.h"

namespace uberlm::cuda {

// The global conv channel of a block's staged channel `local`: q, then k, of key head `key_head` (each
// padded to `key_rows`), then `columns` value columns of value head `head` from column `col0`; -1 for
// padding. `staged`: the staged channels of a token.
__device__ __forceinline__ int64_t staged_conv_channel(int local, int key_rows, int staged, int columns, int key_head,
                                                       int head, int col0, const GatedDeltaNetDims& dims) {
  const int dk = dims.k_head_dim;
  if (local < key_rows) return local < dk ? static_cast<int64_t>(key_head) * dk + local : -1;
  if (local < 2 * key_rows) {
    return local - key_rows < dk ? dims.key_dim() + static_cast<int64_t>(key_head) * dk + local - key_rows : -1;
  }
  if (local < staged && local - 2 * key_rows < columns) {
    return 2 * dims.key_dim() + static_cast<int64_t>(head) * dims.v_head_dim + col0 + local - 2 * key_rows;
  }
  return -1;
}

// One staged channel's conv. kHistory >= conv_kernel - 1 is the register room for previous inputs and
// weights, right-aligned (entry kHistory - 1 is the newest) so that every index is static.
template <int kHistory>
struct ConvChannel {
  int64_t channel;  // global conv channel, -1 for padding
  float newest_weight, past_weights[kHistory], past[kHistory];

  // The channel's weights (conv1d: [conv_dim, kernel]) and, for a chunk continuing its sequence at
  // `start`, the inputs before it from the slot's ring (entry p % kernel holds position p).
  __device__ __forceinline__ void load(int64_t global_channel, const float* conv1d, int kernel, const float* ring,
                                       int64_t conv_dim, int64_t start) {
    load_from(global_channel, conv1d, kernel, ring, conv_dim, start, nullptr, 0);
  }

  // As load, to continue at token `offset` of a chunk whose rows (qkv: [tokens, conv_dim]) start at `rows`:
  // the inputs before come from the chunk's own rows where it has them, from the ring before its start.
  __device__ __forceinline__ void load_from(int64_t global_channel, const float* conv1d, int kernel, const float* ring,
                                            int64_t conv_dim, int64_t start, const float* rows, int64_t offset) {
    channel = global_channel;
    const int history = kernel - 1;
    const bool valid = channel >= 0;
    newest_weight = valid ? conv1d[channel * kernel + history] : 0.0f;
#pragma unroll
    for (int p = 0; p < kHistory; ++p) {
      const int back = kHistory - p;  // inputs before the newest
      const int64_t position = start + offset - back, row = offset - back;
      past_weights[p] = valid && back <= history ? conv1d[channel * kernel + history - back] : 0.0f;
      float input = 0.0f;
      if (valid && back <= history && row >= 0) input = rows[row * conv_dim + channel];
      else if (valid && back <= history && position >= 0) input = ring[(position % kernel) * conv_dim + channel];
      past[p] = input;
    }
  }

  // The conv (before SiLU) at the next input, which joins the history.
  __device__ __forceinline__ float step(float input) {
    float sum = newest_weight * input;
#pragma unroll
    for (int p = 0; p < kHistory; ++p) sum += past_weights[p] * past[p];
#pragma unroll
    for (int p = 0; p + 1 < kHistory; ++p) past[p] = past[p + 1];
    past[kHistory - 1] = input;
    return sum;
  }
};

}  // namespace uberlm::cuda
