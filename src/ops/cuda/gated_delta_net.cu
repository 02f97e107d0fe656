#include "ops/cuda/gated_delta_net.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
constexpr int kMaxConvKernel = 8;

// One thread per (chunk, channel); the kernel - 1 previous inputs slide through registers.
__global__ void causal_conv1d_kernel(const float* qkv, DeviceChunks chunks, const float* weight, int64_t conv_dim,
                                     int kernel, float* conv_state, float* mixed) {
  begin_dependent_kernel();
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int c = blockIdx.y;
  if (ch >= conv_dim) return;
  const int history = kernel - 1;
  float* state = conv_state + (static_cast<int64_t>(chunks.slot[c]) * conv_dim + ch) * history;
  const float* w = weight + ch * kernel;
  const bool fresh = chunks.start[c] == 0;
  float past[kMaxConvKernel];
#pragma unroll
  for (int j = 0; j < kMaxConvKernel - 1; ++j) past[j] = (j < history && !fresh) ? state[j] : 0.0f;
  const int64_t first = chunks.first[c], length = chunks.length[c];
  for (int64_t i = 0; i < length; ++i) {
    const float input = qkv[(first + i) * conv_dim + ch];
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxConvKernel - 1; ++j) {
      if (j < history) sum += w[j] * past[j];
    }
    sum += w[history] * input;
#pragma unroll
    for (int j = 0; j < kMaxConvKernel - 2; ++j) {
      if (j + 1 < history) past[j] = past[j + 1];
    }
#pragma unroll
    for (int j = 0; j < kMaxConvKernel - 1; ++j) {
      if (j == history - 1) past[j] = input;
    }
    mixed[(first + i) * conv_dim + ch] = siluf_exact(sum);
  }
#pragma unroll
  for (int j = 0; j < kMaxConvKernel - 1; ++j) {
    if (j < history) state[j] = past[j];
  }
}

constexpr int kColumnsPerBlock = 32;  // value columns j of S per block
constexpr int kRowParts = 4;          // threads sharing one column, each holding every 4th key row
constexpr int kDeltaThreads = kColumnsPerBlock * kRowParts;

// Grid (chunk, value head, column slice). Thread (column j, part p) keeps S[i, j] for i = p, p + 4, ...
// in registers across the chunk's tokens; q and k of the token sit in shared memory.
template <int kRows>
__global__ void __launch_bounds__(kDeltaThreads) gated_delta_rule_kernel(
    const float* mixed, const float* a, const float* b, const float* a_log, const float* dt_bias, DeviceChunks chunks,
    DeltaNetDims dims, float* state, float* core) {
  begin_dependent_kernel();
  __shared__ float q[kRows * kRowParts], k[kRows * kRowParts];
  __shared__ float scratch[32];
  const int c = blockIdx.x, h = blockIdx.y;
  const int part = threadIdx.x % kRowParts;
  const int j = blockIdx.z * kColumnsPerBlock + threadIdx.x / kRowParts;
  const int dk = dims.k_head_dim, dv = dims.v_head_dim;
  const bool column_valid = j < dv;
  const int key_head = h / (dims.num_v_heads / dims.num_k_heads);
  const int64_t conv_dim = dims.conv_dim(), key_dim = dims.key_dim();
  float* s_head = state + (static_cast<int64_t>(chunks.slot[c]) * dims.num_v_heads + h) * dk * dv;
  const bool fresh = chunks.start[c] == 0;

  float s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = part + kRowParts * r;
    s[r] = (!fresh && column_valid && i < dk) ? s_head[static_cast<int64_t>(i) * dv + j] : 0.0f;
  }
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  const float a_decay = -expf(a_log[h]);
  const int64_t first = chunks.first[c], length = chunks.length[c];
  for (int64_t step = 0; step < length; ++step) {
    const int64_t t = first + step;
    const float* token = mixed + t * conv_dim;
    float q_sq = 0.0f, k_sq = 0.0f;
    for (int i = threadIdx.x; i < dk; i += blockDim.x) {
      const float qi = token[key_head * dk + i], ki = token[key_dim + key_head * dk + i];
      q[i] = qi;
      k[i] = ki;
      q_sq += qi * qi;
      k_sq += ki * ki;
    }
    q_sq = block_sum(q_sq, scratch);
    k_sq = block_sum(k_sq, scratch);
    const float q_norm = 1.0f / sqrtf(q_sq + 1e-6f), k_norm = 1.0f / sqrtf(k_sq + 1e-6f);  // l2norm, eps 1e-6
    const float beta = sigmoidf_exact(b[t * dims.num_v_heads + h]);
    const float decay = expf(a_decay * softplusf_exact(a[t * dims.num_v_heads + h] + dt_bias[h]));  // e^g
    const float v = column_valid ? token[2 * key_dim + static_cast<int64_t>(h) * dv + j] : 0.0f;

    float kv_memory = 0.0f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = part + kRowParts * r;
      s[r] *= decay;  // S = e^g S
      if (i < dk) kv_memory += s[r] * (k[i] * k_norm);  // S^T k
    }
    kv_memory += __shfl_xor_sync(0xffffffffu, kv_memory, 1);
    kv_memory += __shfl_xor_sync(0xffffffffu, kv_memory, 2);
    const float delta = (v - kv_memory) * beta;
    float out = 0.0f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = part + kRowParts * r;
      if (i < dk) {
        s[r] += (k[i] * k_norm) * delta;          // S += k delta^T
        out += s[r] * ((q[i] * q_norm) * q_scale);  // o = S^T q
      }
    }
    out += __shfl_xor_sync(0xffffffffu, out, 1);
    out += __shfl_xor_sync(0xffffffffu, out, 2);
    if (column_valid && part == 0) core[t * dims.value_dim() + static_cast<int64_t>(h) * dv + j] = out;
    __syncthreads();  // q and k are rewritten by the next token
  }
  if (!column_valid) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = part + kRowParts * r;
    if (i < dk) s_head[static_cast<int64_t>(i) * dv + j] = s[r];
  }
}

template <int kRows>
cudaError_t launch_delta_rule_rows(const float* mixed, const float* a, const float* b, const float* a_log,
                                   const float* dt_bias, const DeviceChunks& chunks, const DeltaNetDims& dims,
                                   float* state, float* core, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(chunks.count), static_cast<unsigned>(dims.num_v_heads),
                  blocks_for(dims.v_head_dim, kColumnsPerBlock));
  return launch_dependent(gated_delta_rule_kernel<kRows>, grid, kDeltaThreads, 0, stream, mixed, a, b, a_log, dt_bias,
                          chunks, dims, state, core);
}
}  // namespace

cudaError_t launch_causal_conv1d(const float* qkv, const DeviceChunks& chunks, const float* weight, int64_t conv_dim,
                                 int kernel, float* conv_state, float* mixed, cudaStream_t stream) {
  if (chunks.count == 0) return cudaSuccess;
  if (kernel < 2 || kernel > kMaxConvKernel) return cudaErrorInvalidValue;
  constexpr int kThreads = 128;
  const dim3 grid(blocks_for(conv_dim, kThreads), static_cast<unsigned>(chunks.count));
  return launch_dependent(causal_conv1d_kernel, grid, kThreads, 0, stream, qkv, chunks, weight, conv_dim, kernel,
                          conv_state, mixed);
}

cudaError_t launch_gated_delta_rule(const float* mixed, const float* a, const float* b, const float* a_log,
                                    const float* dt_bias, const DeviceChunks& chunks, const DeltaNetDims& dims,
                                    float* state, float* core, cudaStream_t stream) {
  if (chunks.count == 0) return cudaSuccess;
  if (dims.num_v_heads % dims.num_k_heads != 0) return cudaErrorInvalidValue;
  const int dk = dims.k_head_dim;
  if (dk <= 8 * kRowParts) return launch_delta_rule_rows<8>(mixed, a, b, a_log, dt_bias, chunks, dims, state, core, stream);
  if (dk <= 16 * kRowParts) return launch_delta_rule_rows<16>(mixed, a, b, a_log, dt_bias, chunks, dims, state, core, stream);
  if (dk <= 32 * kRowParts) return launch_delta_rule_rows<32>(mixed, a, b, a_log, dt_bias, chunks, dims, state, core, stream);
  if (dk <= 64 * kRowParts) return launch_delta_rule_rows<64>(mixed, a, b, a_log, dt_bias, chunks, dims, state, core, stream);
  return cudaErrorInvalidValue;
}

}  // namespace uberlm::cuda
