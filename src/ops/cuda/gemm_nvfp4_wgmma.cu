// The NVFP4 small-M GEMM on Hopper's warpgroup MMA (bench/notes/gemv.md, sessions 30-31): the weights are
// wgmma's A operand from registers (64 rows a warpgroup), the tokens its N (8, 16, 32, 64 or 128: m rounded up), so
// the tensor cores do no work for absent tokens and no dequantised weight goes through shared memory.
//
// A block is two consumer warpgroups (128 weight rows of one of the launch's targets) and one producer warp, over
// a share of K (the split); a target's rows are padded to 64 in its tiles, and the padding is never stored.
// The producer streams 64-wide K chunks through a ring of shared-memory stages: per chunk one bulk copy
// of each warpgroup's fragment tile (2560 bytes: codes in the order of the A fragments, then scales;
// nvfp4_wgmma_layout.h) and one tensor copy of the tokens' activations (kTokens x 64 bf16, 128-byte swizzled,
// tokens past m arriving as zeros), all completing on the stage's mbarrier. Each consumer thread reads its
// 16 bytes of codes and its rows' scales, dequantises them straight into its A fragments (the GEMV's exact
// unpack: e2m1 * e4m3 * 2^-7 in bf16) and its warpgroup issues four m64nNk16 for the chunk; the previous chunk's
// products are then waited for and its stage handed back to the producer. With K split, each block writes its
// fp32 sums to the workspace and the last block of a row tile to arrive adds the splits in split order (the
// same bits whichever arrives last), times global_scale * 2^7, into y.
#include "ops/cuda/gemm_nvfp4_wgmma.h"

#include <algorithm>

#include "ops/cuda/async_copy.cuh"
#include "ops/cuda/device_capability.h"
#include "ops/cuda/gemv_nvfp4.cuh"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "ops/cuda/tensor_map.h"
#include "ops/cuda/wgmma.cuh"

namespace uberlm::cuda {

namespace {

constexpr int kWarpgroups = 2;
constexpr int kConsumerThreads = 128 * kWarpgroups;
constexpr int kThreads = kConsumerThreads + 32;  // and the producer warp
constexpr int kRows = static_cast<int>(kNvfp4WgmmaTileRows) * kWarpgroups;  // weight rows a block
constexpr int kChunkBytes = static_cast<int>(kNvfp4WgmmaTileK) * 2;        // an activation row of a chunk (bf16)

// The ring: as many stages as fit ~100 KB a block, 6 to 16, with two blocks an SM. Without the consumers' work,
// eight stages of 4.7 KB streamed at 40-55% of the copy bandwidth; with it, sixteen were no faster than eight: the
// consumers set the pace (bench/notes/gemv.md, session 31). 128 tokens hold 64 accumulators a thread, more than
// two blocks' registers allow: one block an SM, with twice the ring.
constexpr uint32_t kRingBytesPerSm = 200 * 1024;

template <int kTokens>
struct Stages {
  static constexpr int kBlocksPerSm = kTokens <= 64 ? 2 : 1;
  static constexpr uint32_t kActivationBytes = kTokens * kChunkBytes;  // a multiple of 1024 (the swizzle's period)
  static constexpr uint32_t kWeightBytes = kWarpgroups * kNvfp4WgmmaTileBytes;
  static constexpr uint32_t kFit = kRingBytesPerSm / kBlocksPerSm / (kActivationBytes + kWeightBytes);
  static constexpr int kCount = static_cast<int>(kFit < 6 ? 6 : kFit > 16 ? 16 : kFit);
  static constexpr uint32_t kWeightsAt = kCount * kActivationBytes;
  static constexpr uint32_t kBarriersAt = kWeightsAt + kCount * kWeightBytes;
  static constexpr size_t kSharedBytes = kBarriersAt + 2 * kCount * sizeof(uint64_t) + 1024;  // + alignment
};

// A launch's targets: target t's row tiles are blocks first_tile[t] .. first_tile[t + 1] - 1 of the grid's x.
struct WgmmaTargets {
  const uint8_t* tiles[kGemmWgmmaMaxTargets];
  int64_t n[kGemmWgmmaMaxTargets];
  void* y[kGemmWgmmaMaxTargets];
  float output_multiplier[kGemmWgmmaMaxTargets];  // global_scale * 2^7
  int first_tile[kGemmWgmmaMaxTargets + 1];
  int count;
};

struct WgmmaGemmArgs {
  WgmmaTargets targets;
  int chunks;  // K / 64
  int m;
  bool y_is_bf16;
  int splits;          // blocks sharing a row tile's K (gridDim.y)
  float* partials;     // splits > 1: one slot of kConsumerThreads x kTokens / 2 floats a block
  int* tile_arrivals;  // splits > 1: a count per row tile, zero between launches
};

// The kernel's parts exist in its sm_90a code only (the compute_90 PTX of this file is an empty kernel).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// The block's target and its first 64-row tile in it; how many of its warpgroups have rows (the last tile of a
// target whose padded rows are not a multiple of 128 has one).
struct BlockRows {
  int target;
  int64_t group0;
  int groups;
};
__device__ __forceinline__ BlockRows block_rows(const WgmmaTargets& targets) {
  int target = 0;
  while (target + 1 < targets.count && static_cast<int>(blockIdx.x) >= targets.first_tile[target + 1]) ++target;
  const int64_t group0 = static_cast<int64_t>(blockIdx.x - targets.first_tile[target]) * kWarpgroups;
  const int64_t target_groups = (targets.n[target] + kNvfp4WgmmaTileRows - 1) / kNvfp4WgmmaTileRows;
  return {target, group0, static_cast<int>(min(static_cast<int64_t>(kWarpgroups), target_groups - group0))};
}

// The producer warp's lane 0: chunk i of the block's share into stage i % kCount once the consumers have
// handed that stage back. The first stages' weights (constant) are requested before the previous kernel ends.
template <int kTokens>
__device__ void produce(const CUtensorMap& activations, const WgmmaGemmArgs& args, unsigned char* smem, int first,
                        int count, const BlockRows& rows) {
  using S = Stages<kTokens>;
  constexpr int kStages = S::kCount;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S::kBarriersAt);
  uint64_t* empty = full + kStages;
  const uint32_t stage_bytes = S::kActivationBytes + rows.groups * static_cast<uint32_t>(kNvfp4WgmmaTileBytes);
  const uint8_t* tiles = args.targets.tiles[rows.target];
  const auto request_weights = [&](int i) {
    const int stage = i % kStages;
    mbarrier_arrive_expect_bytes(&full[stage], stage_bytes);
    for (int g = 0; g < rows.groups; ++g) {
      bulk_copy_to_shared(smem + S::kWeightsAt + stage * S::kWeightBytes + g * kNvfp4WgmmaTileBytes,
                          tiles + ((rows.group0 + g) * args.chunks + first + i) * kNvfp4WgmmaTileBytes,
                          static_cast<uint32_t>(kNvfp4WgmmaTileBytes), &full[stage]);
    }
  };
  for (int i = 0; i < min(count, kStages); ++i) request_weights(i);
  begin_dependent_kernel();  // the activations are the previous kernel's output
  for (int i = 0; i < count; ++i) {
    const int stage = i % kStages;
    if (i >= kStages) {
      mbarrier_wait<false>(&empty[stage], (i / kStages - 1) & 1);
      request_weights(i);
    }
    tensor_copy_to_shared(smem + stage * S::kActivationBytes, activations, (first + i) * kChunkBytes, 0, &full[stage]);
  }
}

// A consumer thread's A fragments of one chunk: word s of its codes holds k-step s's pairs (row g, row g + 8, row
// g at k + 8, row g + 8 at k + 8); word s of its scales holds k-step s's bf16 scales of rows g and g + 8.
__device__ __forceinline__ void dequantise_fragments(const unsigned char* tile, int warp, int lane,
                                                     uint32_t (&a)[4][4]) {
  const uint4 codes = *reinterpret_cast<const uint4*>(tile + (warp * 32 + lane) * 16);
  const uint4 scales = *reinterpret_cast<const uint4*>(tile + kNvfp4WgmmaTileCodeBytes + (8 * warp + lane / 4) * 16);
  const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
  const uint32_t scale_words[4] = {scales.x, scales.y, scales.z, scales.w};
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const __nv_bfloat162 both = *reinterpret_cast<const __nv_bfloat162*>(&scale_words[s]);
    const __nv_bfloat162 row_g = __low2bfloat162(both), row_g8 = __high2bfloat162(both);
    const auto scaled = [](uint32_t pair, __nv_bfloat162 scale) {
      const __nv_bfloat162 product = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&pair), scale);
      return *reinterpret_cast<const uint32_t*>(&product);
    };
    a[s][0] = scaled(nvfp4_gemv_pair(words[s], 0), row_g);
    a[s][1] = scaled(nvfp4_gemv_pair(words[s], 1), row_g8);
    a[s][2] = scaled(nvfp4_gemv_pair(words[s], 2), row_g);
    a[s][3] = scaled(nvfp4_gemv_pair(words[s], 3), row_g8);
  }
}

// Chunk i for a consumer thread: wait for its stage, dequantise into `a` (whose previous products finished one
// chunk ago), issue the warpgroup's four products, then wait for chunk i - 1's and hand its stage back.
// `activations` is the descriptor of stage 0's activation tile: a stage's is stage * its bytes / 16 further.
template <int kTokens>
__device__ __forceinline__ void consume_chunk(unsigned char* smem, uint64_t activations, int i, bool has_rows,
                                              int group, int warp, int lane, uint32_t (&a)[4][4],
                                              float (&acc)[kTokens / 2]) {
  using S = Stages<kTokens>;
  constexpr int kStages = S::kCount;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S::kBarriersAt);
  uint64_t* empty = full + kStages;
  const int stage = i % kStages;
  mbarrier_wait<false>(&full[stage], (i / kStages) & 1);
  if (has_rows) {
    dequantise_fragments(smem + S::kWeightsAt + stage * S::kWeightBytes + group * kNvfp4WgmmaTileBytes, warp, lane, a);
    const uint64_t stage_activations = activations + stage * (S::kActivationBytes / 16);
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) wgmma_m64nNk16_rs<kTokens>(acc, a[s], stage_activations + s * 2);  // 32 bytes a step
    wgmma_commit();
    wgmma_wait<1>();
  }
  if (i > 0 && lane == 0) mbarrier_arrive(&empty[(i - 1) % kStages]);
}

// Element e of a consumer thread's accumulators: token 8 (e / 4) + 2t + e % 2 of row 16 warp + g + 8 (e % 4 / 2)
// of its warpgroup's 64.
struct AccumulatorPlace {
  int token, row;
};
__device__ __forceinline__ AccumulatorPlace accumulator_place(int e, int group, int warp, int lane) {
  return {8 * (e / 4) + 2 * (lane % 4) + e % 2,
          group * static_cast<int>(kNvfp4WgmmaTileRows) + 16 * warp + lane / 4 + 8 * (e % 4 / 2)};
}

template <int kTokens>
__device__ __forceinline__ void store_outputs(const WgmmaGemmArgs& args, const float (&sums)[kTokens / 2],
                                              const BlockRows& rows, int group, int warp, int lane) {
  const int64_t n = args.targets.n[rows.target], row0 = rows.group0 * kNvfp4WgmmaTileRows;
  const float multiplier = args.targets.output_multiplier[rows.target];
  void* y = args.targets.y[rows.target];
#pragma unroll
  for (int e = 0; e < kTokens / 2; ++e) {
    const AccumulatorPlace place = accumulator_place(e, group, warp, lane);
    if (place.token >= args.m || row0 + place.row >= n) continue;  // tokens past m; the padding rows
    const float value = sums[e] * multiplier;
    const int64_t index = static_cast<int64_t>(place.token) * n + row0 + place.row;
    if (args.y_is_bf16) {
      static_cast<__nv_bfloat16*>(y)[index] = __float2bfloat16_rn(value);
    } else {
      static_cast<float*>(y)[index] = value;
    }
  }
}

// Split K: this block's sums to its workspace slot; the last block of the row tile to arrive adds every split's
// in split order and stores them. Returns whether this block was the last.
template <int kTokens>
__device__ __forceinline__ bool reduce_splits(const WgmmaGemmArgs& args, float (&acc)[kTokens / 2]) {
  __shared__ bool last_split;
  constexpr int kValues = kTokens / 2;
  const auto slot = [&](int split) {
    return reinterpret_cast<float4*>(args.partials) +
           ((static_cast<int64_t>(split) * gridDim.x + blockIdx.x) * kConsumerThreads + threadIdx.x) * (kValues / 4);
  };
#pragma unroll
  for (int q = 0; q < kValues / 4; ++q) {
    slot(blockIdx.y)[q] = make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
  }
  consumer_sync(kConsumerThreads);
  if (threadIdx.x == 0) {
    __threadfence();  // releases every consumer's sums (ordered before it by the barrier) with the arrival
    last_split = atomicAdd(&args.tile_arrivals[blockIdx.x], 1) == args.splits - 1;
    if (last_split) args.tile_arrivals[blockIdx.x] = 0;  // every split has arrived: ready for the next launch
    __threadfence();
  }
  consumer_sync(kConsumerThreads);
  if (!last_split) return false;
  // Each group of four values adds the splits in split order; this block's own part is still in acc (a group's
  // values are replaced only after its last read).
#pragma unroll
  for (int q = 0; q < kValues / 4; ++q) {
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int split = 0; split < kGemmWgmmaMaxSplits; ++split) {
      if (split >= args.splits) break;
      const float4 part = split == static_cast<int>(blockIdx.y)
                              ? make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3])
                              : __ldcg(slot(split) + q);
      sum.x += part.x;
      sum.y += part.y;
      sum.z += part.z;
      sum.w += part.w;
    }
    acc[4 * q] = sum.x;
    acc[4 * q + 1] = sum.y;
    acc[4 * q + 2] = sum.z;
    acc[4 * q + 3] = sum.w;
  }
  return true;
}

#endif

template <int kTokens>
__global__ void __launch_bounds__(kThreads, Stages<kTokens>::kBlocksPerSm)
    gemm_nvfp4_wgmma_kernel(const __grid_constant__ CUtensorMap activations, const WgmmaGemmArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Stages<kTokens>;
  constexpr int kStages = S::kCount;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  unsigned char* smem = shared_bytes + ((1024 - __cvta_generic_to_shared(shared_bytes) % 1024) % 1024);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S::kBarriersAt);
  const int per_split = (args.chunks + args.splits - 1) / args.splits;
  const int first = min(args.chunks, static_cast<int>(blockIdx.y) * per_split);
  const int count = min(args.chunks, first + per_split) - first;
  const BlockRows rows = block_rows(args.targets);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&full[kStages + s], 4 * kWarpgroups);  // empty: one arrival per consumer warp
    }
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x >= kConsumerThreads) {
    if (threadIdx.x == kConsumerThreads) produce<kTokens>(activations, args, smem, first, count, rows);
    return;
  }
  const int group = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32;
  const bool has_rows = group < rows.groups;
  float acc[kTokens / 2] = {};
  uint32_t a0[4][4], a1[4][4];  // two chunks' fragments: the wgmma of one reads its registers while the next fills
  const uint64_t activations_descriptor = wgmma_descriptor(smem, 16, 1024);
  for (int i = 0; i < count; i += 2) {
    consume_chunk<kTokens>(smem, activations_descriptor, i, has_rows, group, warp, lane, a0, acc);
    if (i + 1 < count) {
      consume_chunk<kTokens>(smem, activations_descriptor, i + 1, has_rows, group, warp, lane, a1, acc);
    }
  }
  wgmma_wait<0>();
  if (args.splits > 1 && !reduce_splits<kTokens>(args, acc)) return;
  store_outputs<kTokens>(args, acc, rows, group, warp, lane);
#else
  __trap();  // only built for sm_90a
#endif
}

template <int kTokens>
cudaError_t launch_for_tokens(const CUtensorMap& activations, const WgmmaGemmArgs& args, dim3 grid,
                              cudaStream_t stream) {
  constexpr size_t kShared = Stages<kTokens>::kSharedBytes;
  const cudaError_t allowed = allow_dynamic_shared_memory(gemm_nvfp4_wgmma_kernel<kTokens>, kShared);
  if (allowed != cudaSuccess) return allowed;
  return launch_dependent(gemm_nvfp4_wgmma_kernel<kTokens>, grid, dim3(kThreads), kShared, stream, activations, args);
}

}  // namespace

int gemm_nvfp4_wgmma_splits(int64_t row_tiles, int64_t k) {
  int sms = 132;
  if (current_device_sm_count(sms) != cudaSuccess) sms = 132;
  // As many blocks as fit the GPU at once at two an SM (the consumers are latency-bound, so the second block's
  // warps hide the first's), each with at least 4 chunks. Measured against every split count on the 27B shapes
  // (bench/notes/gemv.md, session 31): the best or within 6% of it, except mlp_gate_up alone (136 row tiles, one
  // split; three are 1.2x faster).
  const int64_t chunks = k / kNvfp4WgmmaTileK;
  const int64_t splits = std::min<int64_t>({2 * sms / std::max<int64_t>(1, row_tiles), chunks / 4, kGemmWgmmaMaxSplits});
  return static_cast<int>(std::max<int64_t>(1, splits));
}

int64_t gemm_nvfp4_wgmma_row_tiles(int64_t n) { return (n + kRows - 1) / kRows; }

int64_t gemm_nvfp4_wgmma_partial_floats(int64_t row_tiles, int64_t m, int splits) {
  return splits * row_tiles * kRows * gemm_nvfp4_wgmma_tokens_bucket(m);
}

int64_t gemm_nvfp4_wgmma_workspace_floats(int64_t row_tiles) {
  constexpr int64_t kLongestK = int64_t{1} << 30;  // no cap from K: the most splits
  int64_t floats = 0;
  for (int64_t tiles = 1; tiles <= row_tiles; ++tiles) {
    floats = std::max(floats, gemm_nvfp4_wgmma_partial_floats(tiles, kGemmWgmmaMaxM,
                                                              gemm_nvfp4_wgmma_splits(tiles, kLongestK)));
  }
  return floats;
}

namespace detail {

cudaError_t launch_gemm_nvfp4_wgmma(const GemmWgmmaLaunch& launch, cudaStream_t stream) {
  const int64_t k = launch.targets[0].weight.cols;
  const int tokens = gemm_nvfp4_wgmma_tokens_bucket(launch.m);
  CUtensorMap activations;
  const cudaError_t encoded = encode_byte_tile_map(activations, launch.x, static_cast<uint64_t>(k) * 2,
                                                   static_cast<uint64_t>(launch.m), kChunkBytes,
                                                   static_cast<uint32_t>(tokens), true);
  if (encoded != cudaSuccess) return encoded;
  WgmmaGemmArgs args{};
  args.targets.count = launch.count;
  for (int t = 0; t < launch.count; ++t) {
    const Nvfp4WgmmaWeight& w = launch.targets[t].weight;
    args.targets.tiles[t] = w.tiles;
    args.targets.n[t] = w.rows;
    args.targets.y[t] = launch.targets[t].y;
    args.targets.output_multiplier[t] = w.global_scale * 128.0f;
    args.targets.first_tile[t + 1] = args.targets.first_tile[t] + static_cast<int>(gemm_nvfp4_wgmma_row_tiles(w.rows));
  }
  args.chunks = static_cast<int>(k / kNvfp4WgmmaTileK);
  args.m = launch.m;
  args.y_is_bf16 = launch.y_is_bf16;
  args.splits = launch.splits;
  args.partials = launch.workspace->partials;
  args.tile_arrivals = launch.workspace->tile_arrivals;
  const dim3 grid(static_cast<unsigned>(args.targets.first_tile[launch.count]), static_cast<unsigned>(launch.splits));
  switch (tokens) {
    case 8:
      return launch_for_tokens<8>(activations, args, grid, stream);
    case 16:
      return launch_for_tokens<16>(activations, args, grid, stream);
    case 32:
      return launch_for_tokens<32>(activations, args, grid, stream);
    case 64:
      return launch_for_tokens<64>(activations, args, grid, stream);
    default:
      return launch_for_tokens<128>(activations, args, grid, stream);
  }
}

}  // namespace detail

}  // namespace uberlm::cuda
