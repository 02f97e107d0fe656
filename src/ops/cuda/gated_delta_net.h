#pragma once
// Gated DeltaNet (linear attention) on the GPU, after ops/cpu/gated_delta_net.h: the causal conv1d over
// each chunk's tokens and the recurrent delta rule with an fp32 state per sequence slot. A chunk's
// tokens run in order inside one kernel (prefill and decode alike); chunks run in parallel.
#include <cuda_runtime_api.h>

#include <cstdint>

#ifdef __CUDACC__
#define UBERLM_HOST_DEVICE __host__ __device__
#else
#define UBERLM_HOST_DEVICE
#endif

namespace uberlm::cuda {

struct DeltaNetDims {
  int num_k_heads;
  int num_v_heads;
  int k_head_dim;  // at most 256
  int v_head_dim;
  int conv_kernel;  // at most 8
  UBERLM_HOST_DEVICE int64_t key_dim() const { return static_cast<int64_t>(num_k_heads) * k_head_dim; }
  UBERLM_HOST_DEVICE int64_t value_dim() const { return static_cast<int64_t>(num_v_heads) * v_head_dim; }
  UBERLM_HOST_DEVICE int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// Chunk c holds tokens [first[c], first[c] + length[c]) of slot slot[c], continuing the sequence at
// start[c]; start[c] == 0 means a new sequence, whose states are taken as zero (nothing is read).
struct DeviceChunks {
  const int32_t* first;
  const int32_t* length;
  const int32_t* slot;
  const int32_t* start;
  int count;
};

// qkv: fp32 [T, conv_dim] pre-activation; weight: fp32 [conv_dim, kernel]; conv_state: fp32
// [slots, conv_dim, kernel - 1], the previous inputs oldest first, updated to the chunk's last inputs;
// mixed: fp32 [T, conv_dim] = silu(sum_j weight[:, j] * column_j).
cudaError_t launch_causal_conv1d(const float* qkv, const DeviceChunks& chunks, const float* weight, int64_t conv_dim,
                                 int kernel, float* conv_state, float* mixed, cudaStream_t stream);

// mixed: fp32 [T, conv_dim] (q | k | v); a, b: fp32 [T, num_v_heads]; a_log, dt_bias: [num_v_heads];
// state: fp32 [slots, num_v_heads, k_head_dim, v_head_dim]; core: fp32 [T, num_v_heads * v_head_dim].
// Per token and value head h (key head h / (Hv / Hk)): q = l2norm(q) / sqrt(dk), k = l2norm(k),
// beta = sigmoid(b), g = -exp(a_log) softplus(a + dt_bias); S = e^g S; delta = beta (v - S^T k);
// S += k delta^T; o = S^T q.
cudaError_t launch_gated_delta_rule(const float* mixed, const float* a, const float* b, const float* a_log,
                                    const float* dt_bias, const DeviceChunks& chunks, const DeltaNetDims& dims,
                                    float* state, float* core, cudaStream_t stream);

}  // namespace uberlm::cuda
