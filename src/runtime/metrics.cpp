#include "runtime/metrics.h"

#include <fmt/format.h>

namespace uberlm {

namespace {

struct MetricName {
  const char* name;
  const char* help;
};

constexpr std::array<MetricName, static_cast<size_t>(Counter::kCount)> kCounterNames{{
    {"uberlm_requests_total", "Finished requests by finish reason"},
    {"uberlm_rejected_requests_total", "Requests refused before reaching the engine, by reason"},
    {"uberlm_prompt_tokens_total", "Prompt tokens of admitted requests"},
    {"uberlm_generation_tokens_total", "Generated tokens"},
    {"uberlm_preemptions_total", "Sequences preempted (caches freed, recomputed later)"},
    {"uberlm_engine_steps_total", "Engine steps by backend and path (decode only, prefill only, mixed)"},
    {"uberlm_step_tokens_total", "Tokens run through the backend, by backend and path"},
    {"uberlm_prefix_cache_queried_tokens_total", "Tokens of admitted sequences that looked up a cached prefix"},
    {"uberlm_prefix_cache_hit_tokens_total", "Tokens whose prefill a cached prefix skipped"},
    {"uberlm_fused_decode_steps_total", "Decode steps whose layers ran the fused kernels (--decode-path)"},
    {"uberlm_fused_decode_fallback_steps_total",
     "Decode steps that asked for the fused kernels and ran unfused: the model is one they cannot run"},
}};

constexpr std::array<MetricName, static_cast<size_t>(Gauge::kCount)> kGaugeNames{{
    {"uberlm_running_sequences", "Sequences with caches, scheduled each step"},
    {"uberlm_waiting_sequences", "Sequences queued for admission (new or preempted)"},
    {"uberlm_kv_cache_usage_ratio", "Fraction of KV cache blocks in use"},
    {"uberlm_kv_cache_blocks_used", "KV cache blocks in use"},
    {"uberlm_kv_cache_blocks_total", "KV cache blocks"},
    {"uberlm_state_cache_usage_ratio", "Fraction of Gated DeltaNet state slots in use"},
    {"uberlm_state_cache_slots_used", "Gated DeltaNet state slots in use"},
    {"uberlm_state_cache_slots_total", "Gated DeltaNet state slots"},
    {"uberlm_prefix_cache_entries", "Cached prefixes (KV blocks and a state snapshot each)"},
    {"uberlm_prefix_cache_snapshots_total", "State snapshots prefix caching may hold (0: prefix caching is off)"},
}};

constexpr std::array<MetricName, static_cast<size_t>(Histogram::kCount)> kHistogramNames{{
    {"uberlm_time_to_first_token_seconds", "From request arrival to its first generated token"},
    {"uberlm_inter_token_latency_seconds", "Between consecutive generated tokens of one request"},
    {"uberlm_request_latency_seconds", "From request arrival to its last event"},
}};

// Upper bounds in seconds, shared by the latency histograms: 1 ms to 2 minutes.
constexpr std::array<double, 16> kBuckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0, 120.0};

}  // namespace

Metrics::Metrics() {
  for (HistogramData& h : histograms_) h.bucket_counts.assign(kBuckets.size(), 0);
}

void Metrics::add(Counter counter, double value, const std::string& labels) {
  std::lock_guard lock(mutex_);
  counters_[static_cast<size_t>(counter)][labels] += value;
}

void Metrics::set(Gauge gauge, double value) {
  std::lock_guard lock(mutex_);
  gauges_[static_cast<size_t>(gauge)] = value;
}

void Metrics::observe(Histogram histogram, double seconds) {
  std::lock_guard lock(mutex_);
  HistogramData& h = histograms_[static_cast<size_t>(histogram)];
  for (size_t b = 0; b < kBuckets.size(); ++b) {
    if (seconds <= kBuckets[b]) {
      ++h.bucket_counts[b];
      break;
    }
  }
  ++h.count;
  h.sum += seconds;
}

double Metrics::value(Counter counter, const std::string& labels) const {
  std::lock_guard lock(mutex_);
  const auto& series = counters_[static_cast<size_t>(counter)];
  auto it = series.find(labels);
  return it == series.end() ? 0.0 : it->second;
}

double Metrics::value(Gauge gauge) const {
  std::lock_guard lock(mutex_);
  return gauges_[static_cast<size_t>(gauge)];
}

std::string Metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (size_t i = 0; i < kCounterNames.size(); ++i) {
    out += fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n", kCounterNames[i].name, kCounterNames[i].help);
    if (counters_[i].empty()) out += fmt::format("{} 0\n", kCounterNames[i].name);
    for (const auto& [labels, value] : counters_[i]) {
      out += labels.empty() ? fmt::format("{} {}\n", kCounterNames[i].name, value)
                            : fmt::format("{}{{{}}} {}\n", kCounterNames[i].name, labels, value);
    }
  }
  for (size_t i = 0; i < kGaugeNames.size(); ++i) {
    out += fmt::format("# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", kGaugeNames[i].name, kGaugeNames[i].help,
                       gauges_[i]);
  }
  for (size_t i = 0; i < kHistogramNames.size(); ++i) {
    const char* name = kHistogramNames[i].name;
    const HistogramData& h = histograms_[i];
    out += fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, kHistogramNames[i].help);
    uint64_t cumulative = 0;
    for (size_t b = 0; b < kBuckets.size(); ++b) {
      cumulative += h.bucket_counts[b];
      out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, kBuckets[b], cumulative);
    }
    out += fmt::format("{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n", name, h.count, h.sum);
  }
  return out;
}

}  // namespace uberlm
