#pragma once
// Server metrics in the Prometheus text format. Every metric is named once, in the tables of
// metrics.cpp; code refers to them by enum. Counters may carry one label set (e.g. the decode path).
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace uberlm {

enum class Counter {
  Requests,           // label finish_reason: stop | length | cancelled | error
  RejectedRequests,   // label reason: queue_full | invalid | unauthorized
  PromptTokens,
  GenerationTokens,
  Preemptions,
  EngineSteps,        // labels backend, path: decode | prefill | mixed
  StepTokens,         // labels backend, path: tokens through the forward, per path
  PrefixCacheQueriedTokens,  // tokens of admitted sequences that looked up a cached prefix
  PrefixCacheHitTokens,      // of those, tokens a cached prefix skipped
  FusedDecodeSteps,          // label backend: decode steps whose layers ran the fused kernels (--decode-path)
  FusedDecodeFallbackSteps,  // label backend: decode steps that asked for them and ran unfused
  kCount,
};

enum class Gauge {
  RunningSequences,
  WaitingSequences,
  KvCacheUsage,       // fraction of KV blocks in use
  KvBlocksUsed,
  KvBlocksTotal,
  StateSlotsUsage,    // fraction of Gated DeltaNet state slots in use
  StateSlotsUsed,
  StateSlotsTotal,
  PrefixCacheEntries,
  PrefixCacheSnapshotsTotal,  // 0: prefix caching is off
  kCount,
};

enum class Histogram {
  TimeToFirstToken,
  InterTokenLatency,
  RequestLatency,
  kCount,
};

class Metrics {
 public:
  Metrics();
  // labels: Prometheus label pairs without braces, e.g. R"(path="decode")"; "" for none.
  void add(Counter counter, double value, const std::string& labels = "");
  void set(Gauge gauge, double value);
  void observe(Histogram histogram, double seconds);
  double value(Counter counter, const std::string& labels = "") const;
  double value(Gauge gauge) const;
  std::string render() const;

 private:
  struct HistogramData {
    std::vector<uint64_t> bucket_counts;  // per upper bound, not cumulative
    uint64_t count = 0;
    double sum = 0.0;
  };
  mutable std::mutex mutex_;
  std::array<std::map<std::string, double>, static_cast<size_t>(Counter::kCount)> counters_;
  std::array<double, static_cast<size_t>(Gauge::kCount)> gauges_{};
  std::array<HistogramData, static_cast<size_t>(Histogram::kCount)> histograms_;
};

}  // namespace uberlm
