#pragma once
// kernel_bench's section for the fused Gated DeltaNet mixer (kernel_bench_mixer.cpp).
#include <cstdint>

#include <nlohmann/json.hpp>

namespace uberlm {

// The fused mixer against its unfused launches at the 27B's layer shape and 1, 2, 4, 8 sequences, with a traced
// launch's per-phase breakdown; printed, and returned as JSON rows.
nlohmann::json time_gated_delta_net_mixer(int iters, double copy_gbps, int64_t l2_bytes);

}  // namespace uberlm
