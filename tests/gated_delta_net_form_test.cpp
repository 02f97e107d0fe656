// Which form of the fused Gated DeltaNet op a chunk runs (ops/cuda/fused/gated_delta_net_layer.h), checked
// without a GPU: the chunked form for prompt chunks long enough for a 64-token solve to pay, with head dims
// its shared-memory tiles hold; everything else token by token.
#ifdef UBERLM_WITH_CUDA
#include <gtest/gtest.h>

#include "ops/cuda/fused/gated_delta_net_layer.h"

namespace uberlm {
namespace {

constexpr cuda::GatedDeltaNetDims kQwen35{16, 48, 128, 128, 4};
constexpr int64_t kMin = cuda::kChunkedDeltaRuleMinTokens;

TEST(GatedDeltaNetForm, LongPromptChunksRunChunked) {
  EXPECT_TRUE(cuda::gated_delta_net_chunk_runs_chunked(kQwen35, false, 2048));
  EXPECT_TRUE(cuda::gated_delta_net_chunk_runs_chunked(kQwen35, false, kMin));
  EXPECT_TRUE(cuda::gated_delta_net_chunk_runs_chunked({4, 8, 64, 64, 4}, false, 512));  // the default model
}

TEST(GatedDeltaNetForm, DecodeAndShortChunksRunTokenByToken) {
  EXPECT_FALSE(cuda::gated_delta_net_chunk_runs_chunked(kQwen35, true, 1));         // a decode step
  EXPECT_FALSE(cuda::gated_delta_net_chunk_runs_chunked(kQwen35, false, 1));        // a decode token beside a prompt
  EXPECT_FALSE(cuda::gated_delta_net_chunk_runs_chunked(kQwen35, false, kMin - 1));  // a short rest of a prompt
}

TEST(GatedDeltaNetForm, HeadDimsOverTheChunkedTilesRunTokenByToken) {
  const int most = cuda::kMaxChunkedDeltaRuleHeadDim;
  EXPECT_TRUE(cuda::gated_delta_net_chunked_supports({1, 1, most, most, 4}));
  EXPECT_FALSE(cuda::gated_delta_net_chunked_supports({1, 1, most + 1, most, 4}));
  EXPECT_FALSE(cuda::gated_delta_net_chunked_supports({1, 1, most, 2 * most, 4}));
  EXPECT_FALSE(cuda::gated_delta_net_chunk_runs_chunked({2, 2, 256, 40, 3}, false, 2048));
}

}  // namespace
}  // namespace uberlm
#endif
