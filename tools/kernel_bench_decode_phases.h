#pragma once
// kernel_bench's section for the fused decode phases (kernel_bench_decode_phases.cpp).
#include <cstdint>

#include <nlohmann/json.hpp>

namespace uberlm {

// The fused launches of a 27B Gated DeltaNet layer's mixer and of the whole layer against their unfused launches at
// 1, 2, 4 and 8 sequences, with a traced launch's per-phase breakdown; printed, and returned as JSON rows.
nlohmann::json time_decode_phases(int iters, double copy_gbps, int64_t l2_bytes);

}  // namespace uberlm
