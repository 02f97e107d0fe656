// The chunked form of the fused Gated DeltaNet layer (gated_delta_net_layer.h) for prefill: within 64 tokens
// (a piece) the delta rule's updates solve one unit lower-triangular system (the WY / UT-transform form of
// ops/cpu/gated_delta_net.h's gated_delta_rule_chunked), so the state is read and written once per piece and
// the products run on tensor cores (tf32 in, fp32 accumulate) instead of one token after another. As in
// flash-linear-attention, the work is split in two kernels: everything that does not need the state before
// a piece (conv, norms, the token-pair matrices, the solve) for all pieces at once, then per chunk and head
// the short recurrence over its pieces.
#include <cooperative_groups.h>
#include <cuda_pipeline.h>

#include <algorithm>

#include "ops/cuda/alignment.h"
#include "ops/cuda/fused/gated_delta_net_conv.cuh"
#include "ops/cuda/fused/gated_delta_net_layer_chunked.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda::detail {

constexpr int kMaxConvKernel = 8;

namespace {
namespace cg = cooperative_groups;

constexpr int kChunk = 64;  // tokens per triangular solve (fla's chunk size)
// The recurrence kernel: 16 warps at <= 128 registers: the phases are bound by latencies, which more warps
// per SM hide (one block per SM, by its shared memory). Warps 0-7 update the state; 8-15 make the piece's
// outputs, each a quarter of the 64 tokens and half of the block's value columns.
constexpr int kThreads = 512, kWarps = kThreads / 32;
constexpr int kStateWarps = 8, kOutWarps = kWarps - kStateWarps;
// A head's value columns are split over a cluster of kSlices blocks (the state's and the deltas' columns
// are independent; every slice repeats the q, k work), so that twice the SMs work.
constexpr int kSlices = 2;

// The chunked form rounds its products to tf32 (2^-11), so SiLU and the decays take the fast intrinsics
// (relative error ~1e-6) instead of the exact forms the token-by-token kernel matches the CPU with.
__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.0f + __expf(-x)); }

// The split cluster barrier: every thread of every block of the cluster arrives once, then waits; shared
// memory written into other blocks before the arrival is visible to them after their wait.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }

// acc[n] += A[16 rows, k] . B[k, 8 columns of tile n] over k_steps x 8 values of k, for the calling warp;
// a_at(row, k) and b_at(k, column) read the operands (rows and columns relative to the tile).
template <int kTiles, class AAt, class BAt>
__device__ __forceinline__ void warp_mma(float (&acc)[kTiles][4], int k_steps, AAt a_at, BAt b_at) {
  const int lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  for (int step = 0; step < k_steps; ++step) {
    const int k0 = step * 8 + tig;
    const uint32_t a[4] = {to_tf32(a_at(g, k0)), to_tf32(a_at(g + 8, k0)), to_tf32(a_at(g, k0 + 4)),
                           to_tf32(a_at(g + 8, k0 + 4))};
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      mma_tf32_m16n8k8(acc[n], a, to_tf32(b_at(k0, n * 8 + g)), to_tf32(b_at(k0 + 4, n * 8 + g)));
    }
  }
}

// Calls f(row, column, value) for each accumulator of the calling lane (rows of the 16-row tile, columns of
// its kTiles x 8).
template <int kTiles, class F>
__device__ __forceinline__ void for_each_fragment(float (&acc)[kTiles][4], F f) {
  const int lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int n = 0; n < kTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) f(g + 8 * (e / 2), n * 8 + 2 * tig + e % 2, acc[n][e]);
  }
}

template <int kTiles>
__device__ __forceinline__ void clear(float (&acc)[kTiles][4]) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// What the prepare kernel leaves for the recurrence kernel, per value head h and token row r of the step
// (T rows): fp32 [Hv][T][kDim] matrices, in each 64-token piece of a chunk (its G_i = g summed from the
// piece's first token to token i, C = the piece's coupling matrix, beta e^(G_i - G_p) k_i.k_p for p < i):
//   query  e^G_i q_i                       key  e^(G_last - G_p) k_p
//   w      (I + C)^-1 (beta e^G k)          u    (I + C)^-1 (beta v)   (value columns, padded to kDim)
// and mixing [Hv][T][kChunk], e^(G_i - G_p) q_i.k_p for p <= i of the piece, and decay [Hv][T], e^G_i.
// With them the piece's deltas are D = u - w S and its outputs e^G Q S + mixing D, from the state S
// before it, which is all the recurrence has to do in order.
struct PieceScratch {
  float *query, *key, *w, *u, *mixing, *decay;
  int64_t tokens;

  template <int kDim>
  static PieceScratch at(float* base, int64_t tokens, int value_heads) {
    const int64_t matrix = static_cast<int64_t>(value_heads) * tokens * kDim;
    PieceScratch p;
    p.query = base;
    p.key = p.query + matrix;
    p.w = p.key + matrix;
    p.u = p.w + matrix;
    p.mixing = p.u + matrix;
    p.decay = p.mixing + static_cast<int64_t>(value_heads) * tokens * kChunk;
    p.tokens = tokens;
    return p;
  }
  template <int kDim>
  static int64_t floats(int64_t tokens, int value_heads) {
    return static_cast<int64_t>(value_heads) * tokens * (4 * kDim + kChunk + 1);
  }
  // Row r of value head h in a [Hv][T][width] matrix.
  __device__ __forceinline__ int64_t row(int h, int64_t r, int width) const { return (h * tokens + r) * width; }
};

// Shared memory of a prepare block, in floats. Row strides are padded so that the fragment loads of the
// mma operands hit distinct banks: rows read as (row g, column tig) fragments get stride = 4 mod 32, rows
// read as (row tig, column g) fragments stride = 8 mod 32. Each buffer holds two things in turn, so that two
// blocks fit an SM: q, then the left right-hand side beta e^G k and w; k, then the coupling matrix; v, then
// the right one, beta v and u.
template <int kDim>
struct PrepareLayout {
  static constexpr int kKeyStride = kDim + 4;    // q, k: [kChunk][kKeyStride]
  static constexpr int kValueStride = kDim + 8;  // v: [kChunk][kValueStride]
  static constexpr int kPairStride = kChunk + 4;  // the coupling matrix, in k's place: [kChunk][kPairStride]
  static constexpr int q = 0;
  static constexpr int k = q + kChunk * kKeyStride;
  static constexpr int v = k + kChunk * kKeyStride;
  static constexpr int log_decay = v + kChunk * kValueStride;  // G_i
  static constexpr int beta = log_decay + kChunk;
  static constexpr int raw_a = beta + kChunk;
  static constexpr int raw_b = raw_a + kChunk;
  static constexpr int token_decay = raw_b + kChunk;  // e^G_i
  static constexpr int key_decay = token_decay + kChunk;  // e^(G_last - G_i)
  static constexpr int floats = key_decay + kChunk;
  static constexpr size_t bytes = floats * sizeof(float);
};

// 8 warps and two blocks per SM: the phases are short and separated by barriers, so a second block's work
// fills one block's waits.
constexpr int kPrepareThreads = 256, kPrepareWarps = kPrepareThreads / 32;

// Grid (piece, chunk, value head): everything of a 64-token piece that does not need the state before it,
// so all pieces of all chunks run at once. Thread `tid` runs the conv of staged channels tid and
// tid + 256 (q | k | v of its key and value head, each padded to kDim), its previous inputs from the chunk's
// rows or the slot's ring.
template <int kDim, int kHistory>
__global__ void __launch_bounds__(kPrepareThreads, 2)
    gated_delta_net_prepare_kernel(const float* __restrict__ qkv, const float* __restrict__ a,
                                   const float* __restrict__ b, GatedDeltaNetParams weights, DeviceChunks chunks,
                                   int64_t min_length, GatedDeltaNetDims dims, GatedDeltaNetState state,
                                   PieceScratch scratch, bool quad_aligned) {
  using L = PrepareLayout<kDim>;
  constexpr int kStaged = 3 * kDim, kRounds = (kStaged + kPrepareThreads - 1) / kPrepareThreads;
  const int piece = blockIdx.x, c = blockIdx.y, h = blockIdx.z;
  const int64_t length = chunks.length[c], t0 = static_cast<int64_t>(piece) * kChunk;
  if (length < min_length || t0 >= length) return;  // the token-by-token kernel's chunk, or past this one's end
  extern __shared__ float smem[];
  float *q = smem + L::q, *k = smem + L::k, *v = smem + L::v;
  float *log_decay = smem + L::log_decay, *beta = smem + L::beta, *raw_a = smem + L::raw_a, *raw_b = smem + L::raw_b;
  float *token_decay = smem + L::token_decay, *key_decay = smem + L::key_decay;
  float* coupling = k;
  // Where staged channel `local` of token i lives: q, k or v.
  auto staged = [&](int i, int local) -> float& {
    if (local < kDim) return q[i * L::kKeyStride + local];
    if (local < 2 * kDim) return k[i * L::kKeyStride + local - kDim];
    return v[i * L::kValueStride + local - 2 * kDim];
  };

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int dk = dims.k_head_dim, dv = dims.v_head_dim, kernel = dims.conv_kernel;
  const int heads_per_key = dims.num_v_heads / dims.num_k_heads, key_head = h / heads_per_key;
  const int64_t conv_dim = dims.conv_dim(), key_dim = dims.key_dim();
  const int hv = dims.num_v_heads;
  const int tokens = static_cast<int>(min(static_cast<int64_t>(kChunk), length - t0));
  const int64_t first = chunks.first[c], start = chunks.start[c], row0 = first + t0;
  const float* ring = state.conv + static_cast<int64_t>(chunks.slot[c]) * kernel * conv_dim;
  begin_dependent_kernel();
  ConvChannel<kHistory> conv[kRounds];
#pragma unroll
  for (int n = 0; n < kRounds; ++n) {
    const int64_t channel = staged_conv_channel(tid + n * kPrepareThreads, kDim, kStaged, dv, key_head, h, 0, dims);
    conv[n].load_from(channel, weights.conv1d, kernel, ring, conv_dim, start, qkv + first * conv_dim, t0);
  }

  // 1. Stage the raw conv inputs and a, b of the piece's tokens: 16-byte copies of each token's q, k and v
  //    segments where rows and heads are 16-byte aligned, else a value per copy.
  if (quad_aligned) {
    const int key_quads = dk / 4, quads = 2 * key_quads + dv / 4;
    for (int e = tid; e < tokens * quads; e += kPrepareThreads) {
      const int i = e / quads, quad = e % quads;
      const float* row = qkv + (row0 + i) * conv_dim;
      const float* from;
      float* to;
      if (quad < key_quads) {
        from = row + static_cast<int64_t>(key_head) * dk + 4 * quad;
        to = q + i * L::kKeyStride + 4 * quad;
      } else if (quad < 2 * key_quads) {
        from = row + key_dim + static_cast<int64_t>(key_head) * dk + 4 * (quad - key_quads);
        to = k + i * L::kKeyStride + 4 * (quad - key_quads);
      } else {
        from = row + 2 * key_dim + static_cast<int64_t>(h) * dv + 4 * (quad - 2 * key_quads);
        to = v + i * L::kValueStride + 4 * (quad - 2 * key_quads);
      }
      __pipeline_memcpy_async(to, from, 16);
    }
  } else {
    for (int i = 0; i < tokens; ++i) {
#pragma unroll
      for (int n = 0; n < kRounds; ++n) {
        if (conv[n].channel >= 0) {
          __pipeline_memcpy_async(&staged(i, tid + n * kPrepareThreads),
                                  qkv + (row0 + i) * conv_dim + conv[n].channel, sizeof(float));
        }
      }
    }
  }
  if (tid < tokens) {
    __pipeline_memcpy_async(&raw_a[tid], a + (row0 + tid) * hv + h, sizeof(float));
    __pipeline_memcpy_async(&raw_b[tid], b + (row0 + tid) * hv + h, sizeof(float));
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();  // a thread's conv channels and warp 0's a, b were staged by other threads

  // 2. Causal conv1d + SiLU in place, token after token; padding rows and channels become zero.
#pragma unroll
  for (int n = 0; n < kRounds; ++n) {
    const int local = tid + n * kPrepareThreads;
    if (local >= kStaged) continue;
#pragma unroll 8
    for (int i = 0; i < kChunk; ++i) {
      float x = 0.0f;
      if (conv[n].channel >= 0 && i < tokens) x = silu_fast(conv[n].step(staged(i, local)));
      staged(i, local) = x;
    }
  }
  if (warp == 0) {
    // g and beta per token; G = g summed up to each token (an inclusive scan over two halves).
    const float a_decay = -expf(weights.a_log[h]), dt_bias = weights.dt_bias[h];
    float g[2], sum[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = lane + 32 * half;
      g[half] = i < tokens ? a_decay * softplusf_exact(raw_a[i] + dt_bias) : 0.0f;
      beta[i] = i < tokens ? sigmoidf_exact(raw_b[i]) : 0.0f;
      sum[half] = g[half];
#pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const float before = __shfl_up_sync(0xffffffffu, sum[half], offset);
        if (lane >= offset) sum[half] += before;
      }
    }
    const float first_half = __shfl_sync(0xffffffffu, sum[0], 31);
    sum[1] += first_half;
    const int last = tokens - 1;
    const float last_sum = __shfl_sync(0xffffffffu, last < 32 ? sum[0] : sum[1], last % 32);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = lane + 32 * half;
      log_decay[i] = sum[half];
      token_decay[i] = __expf(sum[half]);
      key_decay[i] = __expf(last_sum - sum[half]);
    }
  }
  __syncthreads();

  // 3. q = l2norm(q) / sqrt(dk), k = l2norm(k) (eps 1e-6), a warp per token.
  const float q_scale = 1.0f / sqrtf(static_cast<float>(dk));
  for (int i = warp; i < tokens; i += kPrepareWarps) {
    float* q_row = q + i * L::kKeyStride;
    float* k_row = k + i * L::kKeyStride;
    float q_sq = 0.0f, k_sq = 0.0f;
    for (int r = lane; r < kDim; r += 32) {
      q_sq += q_row[r] * q_row[r];
      k_sq += k_row[r] * k_row[r];
    }
    const float q_norm = q_scale / sqrtf(warp_sum(q_sq) + 1e-6f), k_norm = 1.0f / sqrtf(warp_sum(k_sq) + 1e-6f);
    for (int r = lane; r < kDim; r += 32) {
      q_row[r] *= q_norm;
      k_row[r] *= k_norm;
    }
  }
  __syncthreads();

  // 4. The token-pair matrices, 16 rows x 64 columns a warp: the mixing straight to the scratch (rows past the
  //    piece's end stay unwritten: the recurrence does not read them), the coupling kept in registers until
  //    k's buffer is free. Then the scratch's query and key rows and decays.
  static_assert(2 * (kChunk / 16) == kPrepareWarps, "a token-pair job per warp");
  const bool keys = warp < kPrepareWarps / 2;  // k_i.k_p, else q_i.k_p
  const int pair_row0 = 16 * (warp % (kChunk / 16));
  float pairs[8][4];
  clear(pairs);
  {
    const float* left = (keys ? k : q) + pair_row0 * L::kKeyStride;
    warp_mma(pairs, kDim / 8, [&](int r, int x) { return left[r * L::kKeyStride + x]; },
             [&](int x, int p) { return k[p * L::kKeyStride + x]; });
    float* mixing = scratch.mixing + scratch.row(h, row0, kChunk);
    for_each_fragment(pairs, [&](int r, int p, float& dot) {
      const int i = pair_row0 + r;
      const float decay = __expf(log_decay[i] - log_decay[p]);
      if (keys) dot = p < i ? beta[i] * decay * dot : 0.0f;
      else if (i < tokens) mixing[i * kChunk + p] = p <= i ? decay * dot : 0.0f;
    });
  }
  for (int e = tid; e < tokens * kDim; e += kPrepareThreads) {
    const int i = e / kDim, x = e % kDim;
    scratch.query[scratch.row(h, row0 + i, kDim) + x] = token_decay[i] * q[i * L::kKeyStride + x];
    scratch.key[scratch.row(h, row0 + i, kDim) + x] = key_decay[i] * k[i * L::kKeyStride + x];
  }
  if (tid < tokens) scratch.decay[scratch.row(h, row0 + tid, 1)] = token_decay[tid];
  __syncthreads();

  // 5. The right-hand sides: beta e^G k in q's place beside beta v (rows past the end zero on both sides: v
  //    is zero there already); then the coupling into k's place.
  for (int e = tid; e < kChunk * kDim; e += kPrepareThreads) {
    const int i = e / kDim, x = e % kDim;
    q[i * L::kKeyStride + x] = beta[i] * token_decay[i] * k[i * L::kKeyStride + x];
    v[i * L::kValueStride + x] *= beta[i];
  }
  __syncthreads();
  if (keys) for_each_fragment(pairs, [&](int r, int p, float value) { coupling[(pair_row0 + r) * L::kPairStride + p] = value; });
  __syncthreads();

  // 6. (I + C) X = [left | right] for both sides at once, blocked: per 16 rows, the earlier rows' solutions
  //    are taken off on tensor cores (32 columns a warp), then the 16-row diagonal block is solved by
  //    forward substitution, a thread per column, the solutions in registers. Left: w, right: u.
  constexpr int kRhs = 2 * kDim, kTileColumns = kRhs / kPrepareWarps;
  static_assert(kTileColumns % 8 == 0 && kDim % kTileColumns == 0 && kRhs <= kPrepareThreads, "the solve's split");
  auto rhs = [&](int i, int j) -> float& {
    return j < kDim ? q[i * L::kKeyStride + j] : v[i * L::kValueStride + j - kDim];
  };
  for (int block_row0 = 0; block_row0 < tokens; block_row0 += 16) {
    if (block_row0 > 0) {
      const int col0 = kTileColumns * warp;
      float acc[kTileColumns / 8][4];
      clear(acc);
      warp_mma(acc, block_row0 / 8, [&](int r, int p) { return coupling[(block_row0 + r) * L::kPairStride + p]; },
               [&](int p, int j) { return rhs(p, col0 + j); });
      for_each_fragment(acc, [&](int r, int j, float taken) { rhs(block_row0 + r, col0 + j) -= taken; });
      __syncthreads();
    }
    const int j = tid;
    if (j < kRhs) {
      float d[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const float* row = coupling + (block_row0 + i) * L::kPairStride + block_row0;
        float partial[2] = {rhs(block_row0 + i, j), 0.0f};
#pragma unroll
        for (int p = 0; p < i; ++p) partial[p % 2] -= row[p] * d[p];
        d[i] = partial[0] + partial[1];
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) rhs(block_row0 + i, j) = d[i];
    }
    __syncthreads();
  }

  // 7. w and u to the scratch, 16 bytes a copy.
  constexpr int kQuads = kRhs / 4;
  for (int e = tid; e < tokens * kQuads; e += kPrepareThreads) {
    const int i = e / kQuads, x = 4 * (e % kQuads);
    const float4 value = *reinterpret_cast<const float4*>(&rhs(i, x));
    float* to = x < kDim ? scratch.w + scratch.row(h, row0 + i, kDim) + x
                         : scratch.u + scratch.row(h, row0 + i, kDim) + x - kDim;
    *reinterpret_cast<float4*>(to) = value;
  }
}

// Shared memory of a recurrence block, in floats (strides as in PrepareLayout).
template <int kDim>
struct RecurrenceLayout {
  static constexpr int kColumns = kDim / kSlices;  // value columns of a block
  static constexpr int kKeyStride = kDim + 4;      // query, key, w: [kChunk][kKeyStride]
  static constexpr int kValueStride = kColumns + 8;  // u, then the deltas; the gate z
  static constexpr int kStateStride = kColumns + 8;  // S: [kDim][kStateStride], key rows, value columns
  static constexpr int kPairStride = kChunk + 4;     // mixing: [kChunk][kPairStride]
  static constexpr int s = 0;
  static constexpr int query = s + kDim * kStateStride;
  static constexpr int key = query + kChunk * kKeyStride;
  static constexpr int w = key + kChunk * kKeyStride;
  static constexpr int v = w + kChunk * kKeyStride;
  static constexpr int gate = v + kChunk * kValueStride;
  static constexpr int mixing = gate + kChunk * kValueStride;
  static constexpr int row_squares = mixing + kChunk * kPairStride;  // [kChunk][2]: the output's sums of squares per half
  static constexpr int slice_squares = row_squares + 2 * kChunk;  // [parity][kChunk][kSlices], from every slice
  static constexpr int floats = slice_squares + 2 * kChunk * kSlices;
  static constexpr size_t bytes = floats * sizeof(float);
};

// Grid (chunk, value head, column slice); the slices of a head form a cluster. The block walks its chunk
// 64 tokens at a time with its slice of the state in shared memory: D = u - w S, O = query S + mixing D,
// S = e^G_last S + key^T D, then the gated RMSNorm (its sum of squares over the head added across the
// cluster) and the bf16 output.
template <int kDim>
__global__ void __launch_bounds__(kThreads, 1)
    gated_delta_net_recurrence_kernel(const float* __restrict__ z, GatedDeltaNetParams weights, DeviceChunks chunks,
                                      int64_t min_length, GatedDeltaNetDims dims, GatedDeltaNetState state,
                                      PieceScratch scratch, __nv_bfloat16* out, int64_t out_stride, bool quad_aligned) {
  if (chunks.length[blockIdx.x] < min_length) return;  // the token-by-token kernel's chunk (the whole cluster)
  using L = RecurrenceLayout<kDim>;
  constexpr int kColumns = L::kColumns;
  extern __shared__ float smem[];
  float *s = smem + L::s, *query = smem + L::query, *key = smem + L::key, *w = smem + L::w, *v = smem + L::v;
  float *gate = smem + L::gate, *mixing = smem + L::mixing, *row_squares = smem + L::row_squares;
  float* slice_squares = smem + L::slice_squares;
  const cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every slice runs before one writes into another's shared memory

  const int c = blockIdx.x, h = blockIdx.y, slice = blockIdx.z;  // slice = cluster rank
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int dk = dims.k_head_dim, dv = dims.v_head_dim;
  const int64_t value_dim = dims.value_dim();
  const int hv = dims.num_v_heads;
  const int col_base = slice * kColumns, columns = max(0, min(kColumns, dv - col_base));  // this slice's value columns
  const int64_t first = chunks.first[c], length = chunks.length[c], start = chunks.start[c];
  float* s_head = state.recurrent + (static_cast<int64_t>(chunks.slot[c]) * hv + h) * dk * dv;
  for (int e = tid; e < kDim * kColumns; e += kThreads) {
    const int i = e / kColumns, j = e % kColumns;
    s[i * L::kStateStride + j] =
        start > 0 && i < dk && j < columns ? s_head[static_cast<int64_t>(i) * dv + col_base + j] : 0.0f;
  }
  begin_dependent_kernel();

  constexpr int kOutTiles = kColumns / 16;
  const int out_warp = warp - kStateWarps;
  const int out_row0 = 16 * (out_warp / 2), out_col0 = (kColumns / 2) * (out_warp % 2);
  const bool out_warps = warp >= kStateWarps;
  // A piece's tokens, then what it stages: its query and w rows (staged while the piece before finishes: that
  // piece's last phase no longer reads them), then its key rows, this slice's columns of u, its mixing rows
  // and the gate z. Rows past the piece's end are zero (they must add nothing to the state).
  constexpr int kKeyQuads = kDim / 4, kValueQuads = kColumns / 4, kPairQuads = kChunk / 4;
  const auto piece_tokens = [&](int64_t t0) { return static_cast<int>(min(static_cast<int64_t>(kChunk), length - t0)); };
  const auto stage_rows = [&](float* to, const float* from_matrix, int64_t t0) {
    const int tokens = piece_tokens(t0);
    for (int e = tid; e < kChunk * kKeyQuads; e += kThreads) {
      const int i = e / kKeyQuads, x = 4 * (e % kKeyQuads), at = i * L::kKeyStride + x;
      if (i < tokens) __pipeline_memcpy_async(to + at, from_matrix + scratch.row(h, first + t0 + i, kDim) + x, 16);
      else *reinterpret_cast<float4*>(to + at) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  const auto stage_query_and_w = [&](int64_t t0) {
    stage_rows(query, scratch.query, t0);
    stage_rows(w, scratch.w, t0);
    __pipeline_commit();
  };
  const auto stage_rest = [&](int64_t t0) {
    const int tokens = piece_tokens(t0);
    const int64_t row0 = first + t0;
    stage_rows(key, scratch.key, t0);
    for (int e = tid; e < kChunk * kValueQuads; e += kThreads) {
      const int i = e / kValueQuads, x = 4 * (e % kValueQuads), at = i * L::kValueStride + x;
      if (i < tokens) __pipeline_memcpy_async(v + at, scratch.u + scratch.row(h, row0 + i, kDim) + col_base + x, 16);
      else *reinterpret_cast<float4*>(v + at) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    for (int e = tid; e < tokens * kPairQuads; e += kThreads) {
      const int i = e / kPairQuads, x = 4 * (e % kPairQuads);
      __pipeline_memcpy_async(mixing + i * L::kPairStride + x, scratch.mixing + scratch.row(h, row0 + i, kChunk) + x, 16);
    }
    const int width = quad_aligned ? 4 : 1, per_row = (columns + width - 1) / width;
    for (int e = tid; e < tokens * per_row; e += kThreads) {
      const int i = e / per_row, x = width * (e % per_row);
      __pipeline_memcpy_async(gate + i * L::kValueStride + x,
                              z + (row0 + i) * value_dim + static_cast<int64_t>(h) * dv + col_base + x,
                              width * sizeof(float));
    }
    __pipeline_commit();
  };

  stage_query_and_w(0);
  for (int64_t t0 = 0; t0 < length; t0 += kChunk) {
    const int tokens = piece_tokens(t0);
    const int64_t row0 = first + t0;
    // 1. The rest of the piece; then everything it staged has landed.
    stage_rest(t0);
    const float chunk_decay = scratch.decay[scratch.row(h, row0 + tokens - 1, 1)];
    __pipeline_wait_prior(0);
    __syncthreads();

    // 2. Warps 0-7: D = u - w S, 16 rows x kColumns / 2 columns a warp. Warps 8-15: O = query S for their
    //    tokens and columns (kept in registers until step 3).
    float o[kOutTiles][4];
    if (!out_warps) {
      constexpr int kHalf = kColumns / 2;
      const int row0_tile = 16 * (warp / 2), col0 = kHalf * (warp % 2);
      float acc[kHalf / 8][4];
      clear(acc);
      warp_mma(acc, kDim / 8, [&](int r, int x) { return w[(row0_tile + r) * L::kKeyStride + x]; },
               [&](int x, int j) { return s[x * L::kStateStride + col0 + j]; });
      for_each_fragment(acc, [&](int r, int j, float ws) { v[(row0_tile + r) * L::kValueStride + col0 + j] -= ws; });
    } else {
      clear(o);
      warp_mma(o, kDim / 8, [&](int r, int x) { return query[(out_row0 + r) * L::kKeyStride + x]; },
               [&](int x, int j) { return s[x * L::kStateStride + out_col0 + j]; });
    }
    __syncthreads();
    if (t0 + kChunk < length) stage_query_and_w(t0 + kChunk);

    // 3. Warps 0-7: S = e^(G_last) S + key^T D, 16 key rows x up to 64 value columns a unit. Warps 8-15:
    //    O += mixing D, then the gated RMSNorm of each token's head (its sum of squares added over the two
    //    output warps of a token through shared memory, then over the slices through the cluster) and the
    //    bf16 output.
    if (!out_warps) {
      constexpr int kJobColumns = kColumns < 64 ? kColumns : 64;
      for (int unit = warp; unit < (kDim / 16) * (kColumns / kJobColumns); unit += kStateWarps) {
        const int row0_tile = 16 * (unit % (kDim / 16)), col0 = kJobColumns * (unit / (kDim / 16));
        float acc[kJobColumns / 8][4];
        for_each_fragment(acc, [&](int r, int j, float& value) {
          value = chunk_decay * s[(row0_tile + r) * L::kStateStride + col0 + j];
        });
        warp_mma(acc, kChunk / 8, [&](int r, int p) { return key[p * L::kKeyStride + row0_tile + r]; },
                 [&](int p, int j) { return v[p * L::kValueStride + col0 + j]; });
        for_each_fragment(acc, [&](int r, int j, float value) {
          s[(row0_tile + r) * L::kStateStride + col0 + j] = value;
        });
      }
      cluster_arrive();
    } else {
      warp_mma(o, kChunk / 8, [&](int r, int p) { return mixing[(out_row0 + r) * L::kPairStride + p]; },
               [&](int p, int j) { return v[p * L::kValueStride + out_col0 + j]; });
      float squares[2] = {0.0f, 0.0f};  // rows g and g + 8 of the lane
      for_each_fragment(o, [&](int r, int j, float value) {
        if (out_col0 + j < columns) squares[r / 8] += value * value;
      });
      const int g = lane / 4;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        squares[half] += __shfl_xor_sync(0xffffffffu, squares[half], 1);
        squares[half] += __shfl_xor_sync(0xffffffffu, squares[half], 2);
        if (lane % 4 == 0) row_squares[(out_row0 + g + 8 * half) * 2 + out_warp % 2] = squares[half];
      }
      // The output warps alone (named barrier 1): their row sums are in shared memory. Then each token's
      // sum over this slice goes to every slice of the cluster (a buffer per parity of the 64 tokens: a
      // slice may run one 64 tokens ahead).
      asm volatile("bar.sync 1, %0;\n" ::"n"(kOutWarps * 32) : "memory");
      const int parity = static_cast<int>(t0 / kChunk) % 2;
      float* sums = slice_squares + parity * kChunk * kSlices;
      const int out_tid = tid - kStateWarps * 32;
      if (out_tid < kChunk) {
        const float sum = row_squares[out_tid * 2] + row_squares[out_tid * 2 + 1];
        for (int r = 0; r < kSlices; ++r) *cluster.map_shared_rank(&sums[out_tid * kSlices + slice], r) = sum;
      }
      cluster_arrive();
      cluster_wait();
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = out_row0 + g + 8 * half;
        float sum = 0.0f;
#pragma unroll
        for (int r = 0; r < kSlices; ++r) sum += sums[row * kSlices + r];
        squares[half] = inverse_rms(sum, dv, weights.norm_eps);
      }
      for_each_fragment(o, [&](int r, int j, float value) {
        const int i = out_row0 + r, local = out_col0 + j, column = col_base + local;
        if (i >= tokens || local >= columns) return;
        out[(row0 + i) * out_stride + static_cast<int64_t>(h) * dv + column] = __float2bfloat16(
            weights.norm[column] * (value * squares[r / 8]) * silu_fast(gate[i * L::kValueStride + local]));
      });
    }
    if (!out_warps) cluster_wait();
    __syncthreads();  // the next 64 tokens restage every buffer
  }

  for (int e = tid; e < dk * columns; e += kThreads) {
    const int i = e / columns, j = e % columns;
    s_head[static_cast<int64_t>(i) * dv + col_base + j] = s[i * L::kStateStride + j];
  }
}

// After the prepare kernel has read every conv ring: each chunk's last conv_kernel - 1 inputs into its
// slot's ring (entry p % conv_kernel holds position p).
__global__ void conv_ring_append_kernel(const float* __restrict__ qkv, DeviceChunks chunks, int64_t min_length,
                                        GatedDeltaNetDims dims, GatedDeltaNetState state) {
  const int c = blockIdx.y;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, conv_dim = dims.conv_dim();
  begin_dependent_kernel();
  if (ch >= conv_dim) return;
  const int kernel = dims.conv_kernel, slot = chunks.slot[c];
  const int64_t first = chunks.first[c], length = chunks.length[c], start = chunks.start[c];
  if (length < min_length) return;
  float* ring = state.conv + static_cast<int64_t>(slot) * kernel * conv_dim;
  for (int back = 0; back < kernel - 1; ++back) {
    const int64_t position = start + length - 1 - back;
    if (position < start) break;
    ring[(position % kernel) * conv_dim + ch] = qkv[(first + position - start) * conv_dim + ch];
  }
}

struct ChunkedLaunch {
  const float *qkv, *z, *a, *b;
  GatedDeltaNetParams weights;
  DeviceChunks chunks;
  int64_t tokens, longest, min_length;
  GatedDeltaNetDims dims;
  GatedDeltaNetState state;
  float* scratch;
  void* out;
  int64_t out_stride;
  cudaStream_t stream;
};

template <int kDim, int kHistory>
cudaError_t launch_chunked(const ChunkedLaunch& l) {
  const bool quad_aligned =
      aligned(l.qkv, 16) && aligned(l.z, 16) && l.dims.k_head_dim % 4 == 0 && l.dims.v_head_dim % 4 == 0;
  const PieceScratch scratch = PieceScratch::at<kDim>(l.scratch, l.tokens, l.dims.num_v_heads);
  auto* prepare = gated_delta_net_prepare_kernel<kDim, kHistory>;
  cudaError_t status = allow_dynamic_shared_memory(prepare, PrepareLayout<kDim>::bytes);
  if (status != cudaSuccess) return status;
  const dim3 pieces(static_cast<unsigned>((l.longest + kChunk - 1) / kChunk), static_cast<unsigned>(l.chunks.count),
                    static_cast<unsigned>(l.dims.num_v_heads));
  status = launch_dependent(prepare, pieces, dim3(kPrepareThreads), PrepareLayout<kDim>::bytes, l.stream, l.qkv, l.a, l.b,
                            l.weights, l.chunks, l.min_length, l.dims, l.state, scratch, quad_aligned);
  if (status != cudaSuccess) return status;
  auto* recurrence = gated_delta_net_recurrence_kernel<kDim>;
  status = allow_dynamic_shared_memory(recurrence, RecurrenceLayout<kDim>::bytes);
  if (status != cudaSuccess) return status;
  const dim3 heads(static_cast<unsigned>(l.chunks.count), static_cast<unsigned>(l.dims.num_v_heads), kSlices);
  status = launch_dependent_clusters(recurrence, heads, dim3(kThreads), dim3(1, 1, kSlices),
                                     RecurrenceLayout<kDim>::bytes, l.stream, l.z, l.weights, l.chunks, l.min_length,
                                     l.dims, l.state, scratch, static_cast<__nv_bfloat16*>(l.out), l.out_stride,
                                     quad_aligned);
  if (status != cudaSuccess) return status;
  const dim3 ring_grid(blocks_for(l.dims.conv_dim(), 256), static_cast<unsigned>(l.chunks.count));
  return launch_dependent(conv_ring_append_kernel, ring_grid, dim3(256), 0, l.stream, l.qkv, l.chunks, l.min_length,
                          l.dims, l.state);
}

template <int kDim>
cudaError_t launch_dim(const ChunkedLaunch& l) {
  if (l.dims.conv_kernel <= 4) return launch_chunked<kDim, 3>(l);
  return launch_chunked<kDim, kMaxConvKernel - 1>(l);
}

// The head dim the kernels are instantiated for: 64 or 128.
int tile_dim(const GatedDeltaNetDims& dims) { return std::max(dims.k_head_dim, dims.v_head_dim) <= 64 ? 64 : 128; }

}  // namespace

cudaError_t launch_gated_delta_net_layer_chunked(const float* qkv, const float* z, const float* a, const float* b,
                                                 const GatedDeltaNetParams& weights, const DeviceChunks& chunks,
                                                 int64_t tokens, int64_t longest, int64_t min_length,
                                                 const GatedDeltaNetDims& dims, const GatedDeltaNetState& state,
                                                 GatedDeltaNetScratch scratch, void* out, int64_t out_stride,
                                                 cudaStream_t stream) {
  if (!cuda::gated_delta_net_chunked_supports(dims)) return cudaErrorInvalidValue;
  if (scratch.data == nullptr || scratch.floats < gated_delta_net_chunked_scratch_floats(dims, tokens)) {
    return cudaErrorInvalidValue;
  }
  const ChunkedLaunch launch{qkv, z, a, b, weights, chunks, tokens, longest, min_length, dims, state,
                             scratch.data, out, out_stride, stream};
  return tile_dim(dims) == 64 ? launch_dim<64>(launch) : launch_dim<128>(launch);
}

}  // namespace uberlm::cuda::detail

namespace uberlm::cuda {

int64_t gated_delta_net_chunked_scratch_floats(const GatedDeltaNetDims& dims, int64_t tokens) {
  if (!gated_delta_net_chunked_supports(dims)) return 0;
  return detail::tile_dim(dims) == 64 ? detail::PieceScratch::floats<64>(tokens, dims.num_v_heads)
                                      : detail::PieceScratch::floats<128>(tokens, dims.num_v_heads);
}

bool gated_delta_net_chunked_supports(const GatedDeltaNetDims& dims) {
  return dims.k_head_dim <= kMaxChunkedDeltaRuleHeadDim && dims.v_head_dim <= kMaxChunkedDeltaRuleHeadDim &&
         dims.conv_kernel >= 2 && dims.conv_kernel <= detail::kMaxConvKernel;
}

}  // namespace uberlm::cuda
