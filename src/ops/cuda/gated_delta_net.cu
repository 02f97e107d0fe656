#include <cooperative_groups.h>
#include <cuda_pipeline.h>

#include "ops/cuda/gated_delta_net.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda {

namespace {
namespace cg = cooperative_groups;

constexpr int kMaxConvKernel = 8;
constexpr int kColumnsPerBlock = 32;  // value columns j of S per block: one column slice of a value head
constexpr int kRowParts = 4;          // threads sharing one column, each holding every 4th key row
constexpr int kThreads = kColumnsPerBlock * kRowParts;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSlices = 8;  // column slices of a head: one thread-block cluster of the portable size
// Tokens staged in shared memory at once: the conv and the l2 norms run over them in parallel, and the
// cluster exchanges their sums of squares in one barrier.
constexpr int kWindow = 16;

// The conv channels of one block, numbered locally: its key head's q [0, dk), k [dk, 2 dk), then its
// value columns.
struct BlockChannels {
  int64_t q, k, v;  // global channels of local 0, dk and 2 dk
  int dk;
  __device__ int64_t global(int local) const {
    return local < dk ? q + local : local < 2 * dk ? k + (local - dk) : v + (local - 2 * dk);
  }
};

// Grid (chunk, value head, column slice); the slices of a head form one cluster. Thread (column j,
// part p) keeps S[i, j] for i = p, p + 4, ... in registers across the chunk's tokens. Per window of
// tokens: stage the inputs in shared memory, run the conv (each thread owns channels, their last
// inputs in registers) and the l2 norms over all tokens at once, the delta rule token by token, then the
// gated norm, whose sum of squares over the head the cluster's blocks add through distributed shared
// memory. Every block runs the conv of its key head's q and k (cheap), so only its own columns' S and v
// live in one block.
// kHistory >= conv_kernel - 1 is the register room for each channel's previous inputs and weights.
template <int kRows, int kHistory>
__global__ void __launch_bounds__(kThreads)
    gated_delta_net_kernel(const float* __restrict__ qkv, const float* __restrict__ z, const float* __restrict__ a,
                           const float* __restrict__ b, DeltaNetWeights weights, DeviceChunks chunks,
                           DeltaNetDims dims, DeltaNetState state, __nv_bfloat16* out, int64_t out_stride) {
  constexpr int kStride = 2 * kRows * kRowParts + kColumnsPerBlock;  // local channels of one staged token
  constexpr int kRounds = (kStride + kThreads - 1) / kThreads;     // local channels per thread
  __shared__ float mixed[kWindow][kStride];          // conv inputs, then outputs (q and k normalised)
  __shared__ float gate[kWindow][kColumnsPerBlock];  // z
  __shared__ float decay_beta[2][kWindow];           // a and b, then e^g and beta
  __shared__ float head_out[kWindow][kColumnsPerBlock];
  __shared__ float warp_squares[kWindow][kWarps];
  __shared__ float slice_squares[2][kWindow][kMaxSlices];  // [window parity], written by every slice

  const cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block of the cluster runs before one writes into another's shared memory

  const int c = blockIdx.x, h = blockIdx.y, slice = blockIdx.z, slices = gridDim.z;  // slice = cluster rank
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int part = tid % kRowParts, col = tid / kRowParts;
  const int dk = dims.k_head_dim, dv = dims.v_head_dim, kernel = dims.conv_kernel, history = kernel - 1;
  const int heads_per_key = dims.num_v_heads / dims.num_k_heads, key_head = h / heads_per_key;
  const int col0 = slice * kColumnsPerBlock, columns = min(kColumnsPerBlock, dv - col0);
  const int j = col0 + col;
  const bool column_valid = col < columns;
  const int64_t conv_dim = dims.conv_dim(), key_dim = dims.key_dim(), value_dim = dims.value_dim();
  const BlockChannels channel{static_cast<int64_t>(key_head) * dk, key_dim + static_cast<int64_t>(key_head) * dk,
                              2 * key_dim + static_cast<int64_t>(h) * dv + col0, dk};
  const int channels = 2 * dk + columns;

  // Before the previous kernel has finished: metadata, weights and this slot's states (kernel_util.cuh).
  const int slot = chunks.slot[c];
  const int64_t first = chunks.first[c], length = chunks.length[c], start = chunks.start[c];
  const bool fresh = start == 0;
  float* s_head = state.recurrent + (static_cast<int64_t>(slot) * dims.num_v_heads + h) * dk * dv;
  float s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = part + kRowParts * r;
    s[r] = (!fresh && column_valid && i < dk) ? s_head[static_cast<int64_t>(i) * dv + j] : 0.0f;
  }
  float* ring = state.conv + static_cast<int64_t>(slot) * kernel * conv_dim;
  float past_w[kRounds][kHistory], newest_w[kRounds], past[kRounds][kHistory];
#pragma unroll
  for (int n = 0; n < kRounds; ++n) {
    const int local = tid + n * kThreads;
    const bool valid = local < channels;
    const int64_t ch = valid ? channel.global(local) : 0;
    newest_w[n] = valid ? weights.conv1d[ch * kernel + history] : 0.0f;
#pragma unroll
    for (int i = 0; i < kHistory; ++i) {
      const int64_t position = start - history + i;  // before the chunk; a new sequence has none
      past_w[n][i] = valid && i < history ? weights.conv1d[ch * kernel + i] : 0.0f;
      past[n][i] = valid && i < history && position >= 0 ? ring[(position % kernel) * conv_dim + ch] : 0.0f;
    }
  }
  const float a_decay = -expf(weights.a_log[h]), dt_bias = weights.dt_bias[h];
  const float norm_weight = lane < columns ? weights.norm[col0 + lane] : 0.0f;  // the gated norm's column
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  begin_dependent_kernel();

  for (int64_t t0 = 0; t0 < length; t0 += kWindow) {
    const int tokens = static_cast<int>(min(static_cast<int64_t>(kWindow), length - t0));
    const int64_t row0 = first + t0;
    for (int e = tid; e < tokens * channels; e += kThreads) {
      const int i = e / channels, local = e % channels;
      __pipeline_memcpy_async(&mixed[i][local], qkv + (row0 + i) * conv_dim + channel.global(local), sizeof(float));
    }
    for (int e = tid; e < tokens * columns; e += kThreads) {
      const int i = e / columns, cc = e % columns;
      __pipeline_memcpy_async(&gate[i][cc], z + (row0 + i) * value_dim + static_cast<int64_t>(h) * dv + col0 + cc,
                              sizeof(float));
    }
    if (tid < tokens) {
      __pipeline_memcpy_async(&decay_beta[0][tid], a + (row0 + tid) * dims.num_v_heads + h, sizeof(float));
      __pipeline_memcpy_async(&decay_beta[1][tid], b + (row0 + tid) * dims.num_v_heads + h, sizeof(float));
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();

    // Causal conv1d + SiLU in place, each thread over its channels' tokens in order.
#pragma unroll
    for (int n = 0; n < kRounds; ++n) {
      const int local = tid + n * kThreads;
      if (local >= channels) continue;
      for (int i = 0; i < tokens; ++i) {
        const float input = mixed[i][local];
        float sum = 0.0f;
#pragma unroll
        for (int p = 0; p < kHistory; ++p) {
          if (p < history) sum += past_w[n][p] * past[n][p];
        }
        sum += newest_w[n] * input;
#pragma unroll
        for (int p = 0; p + 1 < kHistory; ++p) {
          if (p + 1 < history) past[n][p] = past[n][p + 1];
        }
#pragma unroll
        for (int p = 0; p < kHistory; ++p) {
          if (p == history - 1) past[n][p] = input;
        }
        mixed[i][local] = siluf_exact(sum);
      }
    }
    if (tid < tokens) {
      decay_beta[0][tid] = expf(a_decay * softplusf_exact(decay_beta[0][tid] + dt_bias));  // e^g
      decay_beta[1][tid] = sigmoidf_exact(decay_beta[1][tid]);
    }
    __syncthreads();

    // q = l2norm(q) / sqrt(dk), k = l2norm(k) (eps 1e-6), one warp per token.
    for (int i = warp; i < tokens; i += kWarps) {
      float *q = mixed[i], *k = mixed[i] + dk;
      float q_sq = 0.0f, k_sq = 0.0f;
      for (int e = lane; e < dk; e += 32) {
        q_sq += q[e] * q[e];
        k_sq += k[e] * k[e];
      }
      const float q_norm = 1.0f / sqrtf(warp_sum(q_sq) + 1e-6f), k_norm = 1.0f / sqrtf(warp_sum(k_sq) + 1e-6f);
      for (int e = lane; e < dk; e += 32) {
        q[e] = (q[e] * q_norm) * q_scale;
        k[e] *= k_norm;
      }
    }
    __syncthreads();

    // The delta rule, token by token.
    for (int i = 0; i < tokens; ++i) {
      const float *q = mixed[i], *k = mixed[i] + dk;
      const float decay = decay_beta[0][i], beta = decay_beta[1][i];
      const float v = column_valid ? mixed[i][2 * dk + col] : 0.0f;
      float kv_memory = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int row = part + kRowParts * r;
        s[r] *= decay;                                 // S = e^g S
        if (row < dk) kv_memory += s[r] * k[row];  // S^T k
      }
      kv_memory += __shfl_xor_sync(0xffffffffu, kv_memory, 1);
      kv_memory += __shfl_xor_sync(0xffffffffu, kv_memory, 2);
      const float delta = (v - kv_memory) * beta;
      float o = 0.0f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int row = part + kRowParts * r;
        if (row < dk) {
          s[r] += k[row] * delta;  // S += k delta^T
          o += s[r] * q[row];      // o = S^T q
        }
      }
      o += __shfl_xor_sync(0xffffffffu, o, 1);
      o += __shfl_xor_sync(0xffffffffu, o, 2);
      if (part == 0) head_out[i][col] = o;
      float squares = o * o;  // over the warp's 8 columns (each held by its 4 parts)
      squares += __shfl_xor_sync(0xffffffffu, squares, 4);
      squares += __shfl_xor_sync(0xffffffffu, squares, 8);
      squares += __shfl_xor_sync(0xffffffffu, squares, 16);
      if (lane == 0) warp_squares[i][warp] = squares;
    }
    __syncthreads();

    // Gated RMSNorm over the head: each slice sends its sums of squares to every slice of the cluster.
    const int parity = static_cast<int>(t0 / kWindow) % 2;  // a slice may run one window ahead
    if (tid < tokens) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += warp_squares[tid][w];
      for (int r = 0; r < slices; ++r) *cluster.map_shared_rank(&slice_squares[parity][tid][slice], r) = sum;
    }
    cluster.sync();
    if (lane < columns) {
      for (int i = warp; i < tokens; i += kWarps) {
        float sum = 0.0f;
        for (int r = 0; r < slices; ++r) sum += slice_squares[parity][i][r];
        const float scale = inverse_rms(sum, dv, weights.norm_eps);
        out[(row0 + i) * out_stride + static_cast<int64_t>(h) * dv + col0 + lane] =
            __float2bfloat16(norm_weight * (head_out[i][lane] * scale) * siluf_exact(gate[i][lane]));
      }
    }
    __syncthreads();  // the next window restages the buffers
  }

  if (column_valid) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = part + kRowParts * r;
      if (i < dk) s_head[static_cast<int64_t>(i) * dv + j] = s[r];
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
    if (local >= channels || (local < 2 * dk && !writes_key_ring)) continue;
    const int64_t ch = channel.global(local);
#pragma unroll
    for (int i = 0; i < kHistory; ++i) {
      const int64_t position = start + length - history + i;
      if (i < history && position >= start) ring[(position % kernel) * conv_dim + ch] = past[n][i];
    }
  }
}

template <int kRows, int kHistory>
cudaError_t launch_shape(const float* qkv, const float* z, const float* a, const float* b,
                         const DeltaNetWeights& weights, const DeviceChunks& chunks, const DeltaNetDims& dims,
                         const DeltaNetState& state, void* out, int64_t out_stride, cudaStream_t stream) {
  const unsigned slices = blocks_for(dims.v_head_dim, kColumnsPerBlock);
  const dim3 grid(static_cast<unsigned>(chunks.count), static_cast<unsigned>(dims.num_v_heads), slices);
  return launch_dependent_clusters(gated_delta_net_kernel<kRows, kHistory>, grid, kThreads, dim3(1, 1, slices), 0,
                                   stream, qkv, z, a, b, weights, chunks, dims, state,
                                   static_cast<__nv_bfloat16*>(out), out_stride);
}

// Qwen3.5's conv kernel of 4 keeps 3 previous inputs per channel; larger kernels get room for 7.
template <int kRows>
cudaError_t launch_rows(const float* qkv, const float* z, const float* a, const float* b,
                        const DeltaNetWeights& weights, const DeviceChunks& chunks, const DeltaNetDims& dims,
                        const DeltaNetState& state, void* out, int64_t out_stride, cudaStream_t stream) {
  if (dims.conv_kernel <= 4) {
    return launch_shape<kRows, 3>(qkv, z, a, b, weights, chunks, dims, state, out, out_stride, stream);
  }
  return launch_shape<kRows, kMaxConvKernel - 1>(qkv, z, a, b, weights, chunks, dims, state, out, out_stride, stream);
}
}  // namespace

cudaError_t launch_gated_delta_net(const float* qkv, const float* z, const float* a, const float* b,
                                   const DeltaNetWeights& weights, const DeviceChunks& chunks,
                                   const DeltaNetDims& dims, const DeltaNetState& state, void* out,
                                   int64_t out_stride, cudaStream_t stream) {
  if (chunks.count == 0) return cudaSuccess;
  if (dims.num_k_heads < 1 || dims.num_v_heads % dims.num_k_heads != 0) return cudaErrorInvalidValue;
  if (dims.conv_kernel < 2 || dims.conv_kernel > kMaxConvKernel) return cudaErrorInvalidValue;
  if (dims.v_head_dim < 1 || dims.v_head_dim > kMaxSlices * kColumnsPerBlock) return cudaErrorInvalidValue;
  const int dk = dims.k_head_dim;
  if (dk <= 8 * kRowParts) return launch_rows<8>(qkv, z, a, b, weights, chunks, dims, state, out, out_stride, stream);
  if (dk <= 16 * kRowParts) return launch_rows<16>(qkv, z, a, b, weights, chunks, dims, state, out, out_stride, stream);
  if (dk <= 32 * kRowParts) return launch_rows<32>(qkv, z, a, b, weights, chunks, dims, state, out, out_stride, stream);
  if (dk <= 64 * kRowParts) return launch_rows<64>(qkv, z, a, b, weights, chunks, dims, state, out, out_stride, stream);
  return cudaErrorInvalidValue;
}

}  // namespace uberlm::cuda
