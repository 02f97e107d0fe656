#pragma once
// Device parts of the token-by-token Gated DeltaNet layer op (gated_delta_net_layer.h), callable from fused
// kernels: a value head's conv, delta rule and gated norm for one chunk.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include <cstdint>

#include "ops/cuda/device_chunks.h"
#include "ops/cuda/fused/gated_delta_net_conv.cuh"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda {

// Column slices of a head: one thread-block cluster of the portable size.
inline constexpr int kGatedDeltaNetMaxSlices = 8;

// Value head h's column slice `slice` (of `slices`, one thread-block cluster) of chunk c, by a block of
// kColumns * kParts threads. Thread (column j, part p) keeps S[i, j] for i = p, p + kParts, ... in registers
// across the chunk's tokens. Metadata, weights and the chunk's states are loaded before wait_for_inputs()
// (which waits for whatever writes qkv, z, a and b: the previous kernel, or in a persistent kernel the tasks
// before); a persistent kernel calls it with slices = 1 (its implicit one-block cluster). Per window of
// tokens: each thread stages the inputs of its conv channels (its key head's q and k, which every block
// of that key head recomputes, and its value columns), runs their conv token by token with the previous
// inputs in registers and adds the squares for the l2 norms; then the delta rule token by token; then the
// gated norm, whose sum of squares over the head the cluster's blocks add through distributed shared
// memory. kHistory >= conv_kernel - 1 is the register room per channel for previous inputs and weights,
// right-aligned (entry kHistory - 1 is the newest) so that every index is static. kColumns value
// columns per block, kWindow tokens per window.
template <int kRows, int kHistory, int kColumns, int kWindow, int kParts, class WaitForInputs>
__device__ __forceinline__ void gated_delta_net_block(const float* __restrict__ qkv, const float* __restrict__ z,
                                                      const float* __restrict__ a, const float* __restrict__ b,
                                                      const GatedDeltaNetParams& weights, const DeviceChunks& chunks,
                                                      int64_t skip_from, const GatedDeltaNetDims& dims,
                                                      const GatedDeltaNetState& state, __nv_bfloat16* out,
                                                      int64_t out_stride, int c, int h, int slice, int slices,
                                                      const WaitForInputs& wait_for_inputs) {
  constexpr int kThreads = kColumns * kParts, kWarps = kThreads / 32;
  constexpr int kKeyRows = kRows * kParts;                 // k_head_dim, rounded up
  constexpr int kStride = 2 * kKeyRows + kColumns;            // staged channels of a token: q | k | v
  constexpr int kRounds = (kStride + kThreads - 1) / kThreads;  // staged channels per thread
  __shared__ float mixed[kWindow][kStride];   // conv inputs, then outputs; zero where dk < kKeyRows
  __shared__ float gate[kWindow][kColumns];   // z
  __shared__ float decay_beta[2][kWindow];    // a and b, then e^g and beta
  __shared__ float2 key_squares[kWindow][kWarps];  // per warp: sum q^2, sum k^2
  __shared__ float head_out[kWindow][kColumns];
  __shared__ float out_squares[kWindow][kWarps];
  __shared__ float slice_squares[2][kWindow][kGatedDeltaNetMaxSlices];  // [window parity], written by every slice

  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  cluster.sync();  // every block of the cluster runs before one writes into another's shared memory

  if (chunks.length[c] >= skip_from) return;  // the chunked kernel's chunk (every block of the cluster returns)
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int part = tid % kParts, col = tid / kParts;
  const int dk = dims.k_head_dim, dv = dims.v_head_dim, kernel = dims.conv_kernel, history = kernel - 1;
  const int heads_per_key = dims.num_v_heads / dims.num_k_heads, key_head = h / heads_per_key;
  const int col0 = slice * kColumns, columns = min(kColumns, dv - col0);
  const bool column_valid = col < columns;
  const int64_t conv_dim = dims.conv_dim(), key_dim = dims.key_dim(), value_dim = dims.value_dim();

  // Before the previous kernel has finished: metadata, weights and this slot's states (kernel_util.cuh).
  const int slot = chunks.slot[c];
  const int64_t first = chunks.first[c], length = chunks.length[c], start = chunks.start[c];
  float* s_head = state.recurrent + (static_cast<int64_t>(slot) * dims.num_v_heads + h) * dk * dv + col0 + col;
  float s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = part + kParts * r;
    s[r] = (start > 0 && column_valid && i < dk) ? s_head[static_cast<int64_t>(i) * dv] : 0.0f;
  }
  float* ring = state.conv + static_cast<int64_t>(slot) * kernel * conv_dim;
  ConvChannel<kHistory> conv[kRounds];
#pragma unroll
  for (int n = 0; n < kRounds; ++n) {
    const int64_t channel = staged_conv_channel(tid + n * kThreads, kKeyRows, kStride, columns, key_head, h, col0, dims);
    conv[n].load(channel, weights.conv1d, kernel, ring, conv_dim, start);
  }
  const float a_decay = -expf(weights.a_log[h]), dt_bias = weights.dt_bias[h];
  const int out_column = tid % kColumns;  // the gated norm's thread layout: column, then every 4th token
  const float norm_weight = out_column < columns ? weights.norm[col0 + out_column] : 0.0f;
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  wait_for_inputs();

  for (int64_t t0 = 0; t0 < length; t0 += kWindow) {
    const int tokens = static_cast<int>(min(static_cast<int64_t>(kWindow), length - t0));
    const int64_t row0 = first + t0;
    // Each thread stages what it reads first: its channels, its norm columns, the token's a and b.
    for (int i = 0; i < tokens; ++i) {
#pragma unroll
      for (int n = 0; n < kRounds; ++n) {
        if (conv[n].channel >= 0) {
          __pipeline_memcpy_async(&mixed[i][tid + n * kThreads], qkv + (row0 + i) * conv_dim + conv[n].channel,
                                  sizeof(float));
        }
      }
    }
    if (out_column < columns) {
      for (int i = tid / kColumns; i < tokens; i += kParts) {
        __pipeline_memcpy_async(&gate[i][out_column], z + (row0 + i) * value_dim + static_cast<int64_t>(h) * dv +
                                                          col0 + out_column, sizeof(float));
      }
    }
    if (tid < tokens) {
      __pipeline_memcpy_async(&decay_beta[0][tid], a + (row0 + tid) * dims.num_v_heads + h, sizeof(float));
      __pipeline_memcpy_async(&decay_beta[1][tid], b + (row0 + tid) * dims.num_v_heads + h, sizeof(float));
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);

    // Causal conv1d + SiLU in place; padding channels give silu(0) = 0.
    for (int i = 0; i < tokens; ++i) {
      float q_squares = 0.0f, k_squares = 0.0f;
#pragma unroll
      for (int n = 0; n < kRounds; ++n) {
        const int local = tid + n * kThreads;
        if (local >= kStride) continue;
        const float input = conv[n].channel >= 0 ? mixed[i][local] : 0.0f;
        const float x = siluf_exact(conv[n].step(input));
        mixed[i][local] = x;
        if (local < kKeyRows) q_squares += x * x;
        else if (local < 2 * kKeyRows) k_squares += x * x;
      }
      q_squares = warp_sum(q_squares);
      k_squares = warp_sum(k_squares);
      if (lane == 0) key_squares[i][warp] = make_float2(q_squares, k_squares);
    }
    if (tid < tokens) {
      decay_beta[0][tid] = expf(a_decay * softplusf_exact(decay_beta[0][tid] + dt_bias));  // e^g
      decay_beta[1][tid] = sigmoidf_exact(decay_beta[1][tid]);
    }
    __syncthreads();

    // The delta rule, token by token; q = l2norm(q) / sqrt(dk) and k = l2norm(k) (eps 1e-6) enter as
    // scalars on the dot products.
    for (int i = 0; i < tokens; ++i) {
      const float *q = mixed[i], *k = mixed[i] + kKeyRows;
      float q_sq = 0.0f, k_sq = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float2 squares = key_squares[i][w];
        q_sq += squares.x;
        k_sq += squares.y;
      }
      const float q_norm = q_scale / sqrtf(q_sq + 1e-6f), k_norm = 1.0f / sqrtf(k_sq + 1e-6f);
      const float decay = decay_beta[0][i], beta = decay_beta[1][i];
      const float v = mixed[i][2 * kKeyRows + col];
      float partial[4] = {};
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        s[r] *= decay;                                    // S = e^g S
        partial[r % 4] += s[r] * k[part + kParts * r];  // S^T k
      }
      float kv_memory = (partial[0] + partial[1]) + (partial[2] + partial[3]);
#pragma unroll
      for (int lanes = 1; lanes < kParts; lanes *= 2) kv_memory += __shfl_xor_sync(0xffffffffu, kv_memory, lanes);
      const float delta = (v - kv_memory * k_norm) * beta, k_delta = delta * k_norm;
#pragma unroll
      for (int p = 0; p < 4; ++p) partial[p] = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int row = part + kParts * r;
        s[r] += k[row] * k_delta;          // S += k delta^T
        partial[r % 4] += s[r] * q[row];  // o = S^T q
      }
      float o = (partial[0] + partial[1]) + (partial[2] + partial[3]);
#pragma unroll
      for (int lanes = 1; lanes < kParts; lanes *= 2) o += __shfl_xor_sync(0xffffffffu, o, lanes);
      o *= q_norm;
      if (part == 0) head_out[i][col] = o;
      float squares = o * o;  // over the warp's 32 / kParts columns (each held by its kParts parts)
#pragma unroll
      for (int lanes = kParts; lanes < 32; lanes *= 2) squares += __shfl_xor_sync(0xffffffffu, squares, lanes);
      if (lane == 0) out_squares[i][warp] = squares;
    }
    __syncthreads();

    // Gated RMSNorm over the head: each slice sends its sums of squares to every slice of the cluster.
    const int parity = static_cast<int>(t0 / kWindow) % 2;  // a slice may run one window ahead
    if (tid < tokens) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += out_squares[tid][w];
      for (int r = 0; r < slices; ++r) *cluster.map_shared_rank(&slice_squares[parity][tid][slice], r) = sum;
    }
    cluster.sync();
    if (out_column < columns) {
      for (int i = tid / kColumns; i < tokens; i += kParts) {
        float sum = 0.0f;
        for (int r = 0; r < slices; ++r) sum += slice_squares[parity][i][r];
        const float scale = inverse_rms(sum, dv, weights.norm_eps);
        out[(row0 + i) * out_stride + static_cast<int64_t>(h) * dv + col0 + out_column] =
            __float2bfloat16(norm_weight * (head_out[i][out_column] * scale) * siluf_exact(gate[i][out_column]));
      }
    }
    __syncthreads();  // the next window restages the buffers
  }

  if (column_valid) {
    // The rows' addresses are computed again rather than kept from the loads: kept, they would take two
    // registers a row for the whole chunk.
    int64_t row_stride = dv;
    asm volatile("" : "+l"(row_stride));
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = part + kParts * r;
      if (i < dk) s_head[i * row_stride] = s[r];
    }
  }
  // The conv ring gets the chunk's last inputs. Value columns have this block as their only reader. The
  // key head's q and k have every block of its value heads as readers, and one writer: for one token
  // (decode), the entry of its position, which nobody reads; a longer chunk overwrites entries that the
  // others may not have read yet, so the last of them to finish (counted in ring_readers) writes.
  bool writes_key_ring = h % heads_per_key == 0 && slice == 0;
  if (length > 1) {
    __shared__ bool last_reader;
    if (tid == 0) {
      int32_t* readers = state.ring_readers + static_cast<int64_t>(slot) * dims.num_k_heads + key_head;
      __threadfence();  // this block's ring reads come before its count
      last_reader = atomicAdd(readers, 1) == heads_per_key * slices - 1;
      if (last_reader) atomicExch(readers, 0);
      __threadfence();
    }
    __syncthreads();
    writes_key_ring = last_reader;
  }
#pragma unroll
  for (int n = 0; n < kRounds; ++n) {
    const int local = tid + n * kThreads;
    if (conv[n].channel < 0 || (local < 2 * kKeyRows && !writes_key_ring)) continue;
#pragma unroll
    for (int p = 0; p < kHistory; ++p) {
      const int back = kHistory - 1 - p;  // inputs before the chunk's last
      const int64_t position = start + length - 1 - back;
      if (back < history && position >= start) ring[(position % kernel) * conv_dim + conv[n].channel] = conv[n].past[p];
    }
  }
}

}  // namespace uberlm::cuda
