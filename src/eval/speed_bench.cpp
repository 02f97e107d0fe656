#include "eval/speed_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <set>

#include "core/error.h"
#include "model/model.h"
#include "eval/decoding_batch.h"
#include "runtime/backend.h"
#include "runtime/engine_stack.h"

#ifdef UBERLM_WITH_CUDA
#include <cuda_runtime_api.h>

#include "ops/cuda/cuda_check.h"
#endif

namespace uberlm {

#ifdef UBERLM_WITH_CUDA

namespace {

constexpr uint64_t kSyntheticSeed = 20260101;
constexpr int kProfileSteps = 5;

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Device-to-device copy of 1 GiB, bytes read plus bytes written over the median time of 20 copies.
double copy_bandwidth_gbps() {
  const size_t bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  CUDA_CHECK(cudaMalloc(&src, bytes));
  CUDA_CHECK(cudaMalloc(&dst, bytes));
  CUDA_CHECK(cudaMemset(src, 0x5a, bytes));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> seconds;
  for (int i = 0; i < 23; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i >= 3) seconds.push_back(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  CUDA_CHECK(cudaFree(src));
  CUDA_CHECK(cudaFree(dst));
  return 2.0 * static_cast<double>(bytes) / median(seconds) / 1e9;
}

nlohmann::json profile_json(const std::vector<KernelTime>& times, int steps) {
  nlohmann::json out = nlohmann::json::array();
  for (const KernelTime& t : times) {
    out.push_back({{"op", t.op}, {"us_per_step", t.microseconds / steps}, {"launches_per_step", t.launches / steps}});
  }
  return out;
}

struct DecodeResult {
  double seconds_per_step;
  int64_t context;  // the sequences' mean cached length over the timed steps
};

DecodeResult time_decode(Engine& engine, int batch, int context, int setup, int steps, int vocab) {
  DecodingBatch sequences(engine, batch, context, setup + kWarmSteps + steps, vocab);
  std::vector<double> step_seconds;
  for (int step = 0; step < steps; ++step) {
    const double start = now_seconds();
    const EngineStep ran = engine.run_step();
    step_seconds.push_back(now_seconds() - start);
    if (!sequences.is_full_decode(ran)) fail("bench: a timed step ran {} decode and {} prefill tokens, expected {} and 0",
                                             ran.decode_tokens, ran.prefill_tokens, batch);
  }
  return {median(step_seconds), context + kWarmSteps + steps / 2 + 1};
}

// Prefill of a `length`-token prompt, from submission to its first token: the engine steps until every prompt
// token has run, one step or several as the step budget cuts the prompt (the request then samples one token
// and ends).
double time_prefill(Engine& engine, int length, int salt, int vocab) {
  EngineRequest request;
  request.prompt = synthetic_prompt(length, salt, vocab);
  request.max_tokens = 1;
  std::shared_ptr<RequestStream> stream = engine.submit(std::move(request));
  if (!stream) fail("bench: the engine refused the prefill request");
  const double start = now_seconds();
  int64_t prefilled = 0;
  while (prefilled < length) {
    const int64_t ran = engine.run_step().prefill_tokens;
    if (ran == 0) fail("bench: a prefill step ran none of the {} prompt tokens left", length - prefilled);
    prefilled += ran;
  }
  const double seconds = now_seconds() - start;
  if (prefilled != length) fail("bench: the prefill steps ran {} of {} prompt tokens", prefilled, length);
  StreamEvent event;
  if (!stream->next(event, std::chrono::milliseconds(0)) || !event.finished || !event.error.empty()) {
    fail("bench: the prefill request did not end with its first token ({})", event.error);
  }
  return seconds;
}

}  // namespace

nlohmann::json run_speed_bench(const SpeedBenchOptions& options) {
  if (!cuda_device_present()) fail("bench: no CUDA device is visible");
  if (options.weights != "nvfp4" && options.weights != "bf16") fail("bench: --weights {}: nvfp4 or bf16", options.weights);
  cudaDeviceProp props{};
  CUDA_CHECK(cudaGetDeviceProperties(&props, 0));
  const double copy_gbps = copy_bandwidth_gbps();
  std::printf("GPU %s: copy bandwidth %.0f GB/s (read + write)\n", props.name, copy_gbps);

  const int max_batch = *std::max_element(options.batches.begin(), options.batches.end());
  const int max_prefill = options.prefill.empty() ? 0 : *std::max_element(options.prefill.begin(), options.prefill.end());
  EngineStackOptions stack_options;
  stack_options.device = "cuda";
  stack_options.tensor_parallel = options.tensor_parallel;
  stack_options.max_num_seqs = max_batch;
  if (options.prefill_chunk < 0) fail("bench: --prefill-chunk {} must be >= 0", options.prefill_chunk);
  const int step_tokens = options.prefill_chunk > 0 ? options.prefill_chunk : max_prefill;
  stack_options.max_num_batched_tokens = std::max({step_tokens, options.context, 2 * max_batch, 64});
  const int setup = setup_tokens(max_batch, options.context, stack_options.max_num_batched_tokens);
  stack_options.max_model_len =
      std::max(max_prefill + 1, options.context + setup + kWarmSteps + std::max(options.steps, kProfileSteps));
  // Each sequence's KV blocks are whole: a pool of max_batch x max_model_len tokens can be a few blocks short of
  // max_batch sequences at full length, which then preempt one another.
  const int64_t blocks_per_sequence = (stack_options.max_model_len + kKvBlockSize - 1) / kKvBlockSize;
  stack_options.kv_cache_tokens = static_cast<int64_t>(max_batch) * blocks_per_sequence * kKvBlockSize;
  stack_options.loop_thread = false;
  stack_options.tuning_table = options.tuning_table;
  stack_options.strict = options.strict;
  stack_options.deterministic = options.deterministic;
  stack_options.small_m_gemm = options.small_m_gemm;
  stack_options.decode_path = options.decode_path;

  std::unique_ptr<Model> model;
  std::unique_ptr<EngineStack> stack;
  std::string shape_name = options.shape_name;
  if (!options.model.empty()) {
    model = Model::load(options.model);
    stack = std::make_unique<EngineStack>(*model, nullptr, stack_options);
    shape_name = options.model;
  } else {
    const SyntheticFormat format = options.weights == "nvfp4" ? SyntheticFormat::Nvfp4 : SyntheticFormat::Bf16;
    stack = std::make_unique<EngineStack>(options.shape, format, kSyntheticSeed, nullptr, stack_options);
  }
  GpuBackend& backend = *stack->gpu_backend();
  Engine& engine = stack->engine();
  // With tensor parallelism every GPU streams its own shard: the roofline is the GPUs' copy bandwidth together.
  const double roofline_gbps = copy_gbps * options.tensor_parallel;
  const ModelConfig& config = backend.config();
  const int vocab = config.vocab_size;
  const int64_t weight_bytes = backend.weight_bytes();
  std::printf("shape %s (%s weights, lm_head bf16): %d layers, hidden %d; linear weights %.2f GB; %s\n",
              shape_name.c_str(), options.model.empty() ? options.weights.c_str() : "checkpoint", config.num_layers,
              config.hidden_size, weight_bytes / 1e9, backend.memory_summary().c_str());

  nlohmann::json report;
  report["gpu"] = props.name;
  report["command"] = options.command;
  report["deterministic"] = options.deterministic;
  report["small_m_gemm"] = options.small_m_gemm;
  report["decode_path"] = decode_path_name(options.decode_path);
  report["shape"] = shape_name;
  report["weights"] = options.model.empty() ? options.weights : "checkpoint";
  report["copy_gbps"] = copy_gbps;
  report["tensor_parallel"] = options.tensor_parallel;
  report["roofline_gbps"] = roofline_gbps;
  report["weight_bytes"] = weight_bytes;
  report["context_before_decode"] = options.context;
  report["timing"] = "engine steps (schedule, forward, greedy sampling on the device), median";
  report["prefill_chunk"] = options.prefill_chunk;
  report["memory"] = backend.memory_summary();

  std::printf("\n%6s %10s %11s %14s %14s %9s %9s\n", "batch", "ms/step", "tok/s", "MB/step", "MB/token", "GB/s",
              "roofline");
  for (int batch : options.batches) {
    const DecodeResult decode = time_decode(engine, batch, options.context, setup, options.steps, vocab);
    const double step = decode.seconds_per_step;
    const double step_bytes = static_cast<double>(weight_bytes) +
                              static_cast<double>(batch) * static_cast<double>(backend.cache_bytes_per_token(decode.context));
    const double gbps = step_bytes / step / 1e9;
    std::printf("%6d %10.3f %11.1f %14.1f %14.1f %9.0f %8.1f%%\n", batch, step * 1e3, batch / step, step_bytes / 1e6,
                step_bytes / batch / 1e6, gbps, 100 * gbps / roofline_gbps);
    report["decode"].push_back({{"batch", batch},
                                {"ms_per_step", step * 1e3},
                                {"ms_per_token", step * 1e3 / batch},
                                {"tokens_per_s", batch / step},
                                {"bytes_per_step", step_bytes},
                                {"bytes_per_token", step_bytes / batch},
                                {"achieved_gbps", gbps},
                                {"roofline_fraction", gbps / roofline_gbps}});
  }

  if (options.prefill_chunk > 0) std::printf("\nprompts in steps of at most %d tokens", options.prefill_chunk);
  std::printf("\n%8s %10s %11s\n", "prefill", "ms", "tok/s");
  for (int length : options.prefill) {
    std::vector<double> seconds;
    for (int rep = 0; rep < 3; ++rep) seconds.push_back(time_prefill(engine, length, rep, vocab));
    const double t = median(seconds);
    std::printf("%8d %10.2f %11.1f\n", length, t * 1e3, length / t);
    report["prefill"].push_back({{"tokens", length}, {"ms", t * 1e3}, {"tokens_per_s", length / t}});
  }

  // Profiling pass: eager forwards with CUDA events around each op class.
  std::printf("\nper-op GPU time (profiling pass, eager, events around each op class), us per step:\n");
  for (int batch : std::set<int>{1, 8, max_batch}) {
    if (batch > max_batch) continue;
    DecodingBatch sequences(engine, batch, options.context, setup + kWarmSteps + kProfileSteps, vocab);
    backend.set_profiling(true);
    for (int step = 0; step < kProfileSteps; ++step) engine.run_step();
    backend.set_profiling(false);
    const std::vector<KernelTime> times = backend.take_profile();
    double total = 0;
    for (const KernelTime& t : times) total += t.microseconds / kProfileSteps;
    std::printf("  decode batch %d (sum %.0f us):\n", batch, total);
    for (const KernelTime& t : times) {
      std::printf("    %-24s %10.1f us %6lld launches\n", t.op.c_str(), t.microseconds / kProfileSteps,
                  static_cast<long long>(t.launches / kProfileSteps));
    }
    report["kernels"]["decode_batch_" + std::to_string(batch)] = profile_json(times, kProfileSteps);
  }
  for (int length : options.prefill) {
    backend.set_profiling(true);
    time_prefill(engine, length, 0, vocab);
    backend.set_profiling(false);
    const std::vector<KernelTime> times = backend.take_profile();
    std::printf("  prefill %d:\n", length);
    for (const KernelTime& t : times) std::printf("    %-24s %10.1f us\n", t.op.c_str(), t.microseconds);
    report["kernels"]["prefill_" + std::to_string(length)] = profile_json(times, 1);
  }
  const GpuBackend::Counters counters = backend.counters();
  report["counters"] = {{"gemv_linear_calls", counters.gemv_linear_calls},
                        {"gemm_bf16_linear_calls", counters.gemm_bf16_linear_calls},
                        {"gemm_nvfp4_linear_calls", counters.gemm_nvfp4_linear_calls},
                        {"gemm_nvfp4_prefetched_calls", counters.gemm_nvfp4_prefetched_calls},
                        {"gemv_swiglu_calls", counters.gemv_swiglu_calls},
                        {"wgmma_linear_calls", counters.wgmma_linear_calls},
                        {"tuning_table_hits", counters.tuning_table_hits},
                        {"tuning_table_misses", counters.tuning_table_misses},
                        {"prefill_attention_calls", counters.prefill_attention_calls},
                        {"prefill_attention_wgmma_calls", counters.prefill_attention_wgmma_calls},
                        {"prefill_attention_fallbacks", counters.prefill_attention_fallbacks},
                        {"chunked_delta_rule_calls", counters.chunked_delta_rule_calls},
                        {"chunked_delta_rule_fallbacks", counters.chunked_delta_rule_fallbacks},
                        {"fused_decode_layers", counters.fused_decode_layers},
                        {"fused_decode_fallbacks", counters.fused_decode_fallbacks},
                        {"graph_captures", counters.graph_captures},
                        {"graph_replays", counters.graph_replays}};
  std::printf("\nGEMV tunings: %lld launches from the table, %lld on the built-in tuning (cells the table lacks)\n",
              static_cast<long long>(counters.tuning_table_hits), static_cast<long long>(counters.tuning_table_misses));
  std::printf("linear calls: GEMV %lld (gate/up with SwiGLU epilogue %lld), wgmma GEMM %lld, cuBLAS bf16 %lld, "
              "cuBLAS NVFP4 (dequantised) %lld (of them dequantised beside the mixer %lld); graph captures %lld, "
              "replays %lld\n",
              static_cast<long long>(counters.gemv_linear_calls), static_cast<long long>(counters.gemv_swiglu_calls),
              static_cast<long long>(counters.wgmma_linear_calls),
              static_cast<long long>(counters.gemm_bf16_linear_calls),
              static_cast<long long>(counters.gemm_nvfp4_linear_calls),
              static_cast<long long>(counters.gemm_nvfp4_prefetched_calls),
              static_cast<long long>(counters.graph_captures), static_cast<long long>(counters.graph_replays));
  std::printf("prompt steps: prefill attention %lld layers (on wgmma %lld; decode kernel instead %lld); Gated "
              "DeltaNet chunked form %lld layers (token by token for head dims over its tiles %lld)\n",
              static_cast<long long>(counters.prefill_attention_calls),
              static_cast<long long>(counters.prefill_attention_wgmma_calls),
              static_cast<long long>(counters.prefill_attention_fallbacks),
              static_cast<long long>(counters.chunked_delta_rule_calls),
              static_cast<long long>(counters.chunked_delta_rule_fallbacks));
  std::printf("decode steps: fused launches for %lld layers (unfused where they cannot run the model %lld)\n",
              static_cast<long long>(counters.fused_decode_layers),
              static_cast<long long>(counters.fused_decode_fallbacks));
  return report;
}

#else
nlohmann::json run_speed_bench(const SpeedBenchOptions&) { fail("bench: this binary was built without CUDA"); }
#endif

}  // namespace uberlm
