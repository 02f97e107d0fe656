// `uberlm bench`: decode and prefill speed of the CUDA backend on a model shape with random weights made on
// the GPU (or a real checkpoint), against the copy bandwidth measured in the same run:
//   decode at each batch: ms per step, tokens/s, bytes read per step and per token (all linear weights +
//   each sequence's KV and Gated DeltaNet state), achieved GB/s and its fraction of the copy bandwidth;
//   prefill of each prompt length; a per-op-class microsecond table from a profiling pass; JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_shapes.h"
#include "core/error.h"
#include "model/config.h"
#include "model/model.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_tensor_parallel_backend.h"

#ifdef UBERLM_WITH_CUDA
#include <cuda_runtime_api.h>

#include "ops/cuda/cuda_check.h"
#endif

namespace uberlm::cli {

namespace {

struct BenchOptions {
  std::string shape = "qwen3.5-27b";
  std::string weights = "nvfp4";
  std::string model;
  std::vector<int> batches = {1, 2, 4, 8, 16, 32, 64};
  std::vector<int> prefill = {512, 2048};
  int context = 128;     // tokens in each sequence before the timed decode steps
  int steps = 24;        // timed decode steps per batch
  int tensor_parallel = 1;  // > 1: the model sharded over that many GPUs through NCCL
  std::string json_path;
  std::string command;
};

#ifdef UBERLM_WITH_CUDA

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
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

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Fills slots 0..batch-1 with `context` random tokens each, in forwards of at most max_tokens tokens.
void prefill_slots(GpuBackend& backend, int batch, int context, int64_t max_tokens) {
  for (int s = 0; s < backend.max_slots(); ++s) backend.release(s);
  ForwardBatch forward;
  for (int s = 0; s < batch; ++s) {
    if (static_cast<int64_t>(forward.tokens.size()) + context > max_tokens) {
      backend.forward_on_device(forward);
      forward = ForwardBatch{};
    }
    for (int i = 0; i < context; ++i) forward.tokens.push_back((s * 7919 + i * 104729) % backend.config().vocab_size);
    forward.chunks.push_back({s, context, true});
  }
  if (!forward.chunks.empty()) backend.forward_on_device(forward);
}

ForwardBatch decode_batch(const std::vector<int32_t>& tokens) {
  ForwardBatch batch;
  batch.tokens = tokens;
  for (size_t s = 0; s < tokens.size(); ++s) batch.chunks.push_back({static_cast<int>(s), 1, true});
  return batch;
}

nlohmann::json profile_json(const std::vector<KernelTime>& times, int steps) {
  nlohmann::json out = nlohmann::json::array();
  for (const KernelTime& t : times) {
    out.push_back({{"op", t.op}, {"us_per_step", t.microseconds / steps}, {"launches_per_step", t.launches / steps}});
  }
  return out;
}

void run_bench(const BenchOptions& options) {
  if (!cuda_device_present()) fail("bench: no CUDA device is visible");
  if (options.weights != "nvfp4" && options.weights != "bf16") fail("bench: --weights {}: nvfp4 or bf16", options.weights);
  cudaDeviceProp props{};
  CUDA_CHECK(cudaGetDeviceProperties(&props, 0));
  const double copy_gbps = copy_bandwidth_gbps();
  std::printf("GPU %s: copy bandwidth %.0f GB/s (read + write)\n", props.name, copy_gbps);

  const int max_batch = *std::max_element(options.batches.begin(), options.batches.end());
  const int max_prefill = options.prefill.empty() ? 0 : *std::max_element(options.prefill.begin(), options.prefill.end());
  CudaBackendOptions backend_options;
  backend_options.max_slots = max_batch;
  backend_options.max_context = std::max(max_prefill, options.context) + options.steps + 16;
  backend_options.max_batch_tokens = std::max<int64_t>({max_prefill, options.context, 64});
  backend_options.max_logit_rows = std::max(64, max_batch);

  std::unique_ptr<Model> model;
  std::unique_ptr<GpuBackend> backend;
  std::string shape_name = options.shape;
  const int ranks = options.tensor_parallel;
  if (!options.model.empty()) {
    model = Model::load(options.model);
    if (ranks > 1) backend = std::make_unique<CudaTensorParallelBackend>(*model, ranks, backend_options);
    else backend = std::make_unique<CudaBackend>(*model, backend_options);
    shape_name = options.model;
  } else {
    const SyntheticFormat format = options.weights == "nvfp4" ? SyntheticFormat::Nvfp4 : SyntheticFormat::Bf16;
    const ModelConfig shape = shape_config(options.shape);
    if (ranks > 1) {
      backend = std::make_unique<CudaTensorParallelBackend>(shape, format, ranks, backend_options, 20260101);
    } else {
      backend = std::make_unique<CudaBackend>(shape, format, backend_options, 20260101);
    }
  }
  // With tensor parallelism every GPU streams its own shard: the roofline is the GPUs' copy bandwidth together.
  const double roofline_gbps = copy_gbps * ranks;
  const ModelConfig& config = backend->config();
  const int64_t weight_bytes = backend->weight_bytes();
  std::printf("shape %s (%s weights, lm_head bf16): %d layers, hidden %d; linear weights %.2f GB; %s\n",
              shape_name.c_str(), options.model.empty() ? options.weights.c_str() : "checkpoint", config.num_layers,
              config.hidden_size, weight_bytes / 1e9, backend->memory_summary().c_str());

  nlohmann::json report;
  report["gpu"] = props.name;
  report["command"] = options.command;
  report["shape"] = shape_name;
  report["weights"] = options.model.empty() ? options.weights : "checkpoint";
  report["copy_gbps"] = copy_gbps;
  report["tensor_parallel"] = ranks;
  report["roofline_gbps"] = roofline_gbps;
  report["weight_bytes"] = weight_bytes;
  report["context_before_decode"] = options.context;

  std::printf("\n%6s %10s %11s %14s %14s %9s %9s\n", "batch", "ms/step", "tok/s", "MB/step", "MB/token", "GB/s",
              "roofline");
  for (int batch : options.batches) {
    prefill_slots(*backend, batch, options.context, backend_options.max_batch_tokens);
    std::vector<int32_t> tokens(batch);
    for (int s = 0; s < batch; ++s) tokens[s] = (s * 31 + 7) % config.vocab_size;
    for (int warm = 0; warm < 3; ++warm) {
      backend->forward_on_device(decode_batch(tokens));
      tokens = backend->argmax_tokens();
    }
    std::vector<double> step_seconds;
    double context_sum = 0;
    for (int step = 0; step < options.steps; ++step) {
      context_sum += static_cast<double>(backend->cached_length(0));
      const double start = now_seconds();
      backend->forward_on_device(decode_batch(tokens));
      tokens = backend->argmax_tokens();
      step_seconds.push_back(now_seconds() - start);
    }
    const double step = median(step_seconds);
    const int64_t context = static_cast<int64_t>(context_sum / options.steps) + 1;
    const double step_bytes = static_cast<double>(weight_bytes) + static_cast<double>(batch) * backend->cache_bytes_per_token(context);
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

  std::printf("\n%8s %10s %11s\n", "prefill", "ms", "tok/s");
  for (int length : options.prefill) {
    std::vector<double> seconds;
    for (int rep = 0; rep < 3; ++rep) {
      backend->release(0);
      ForwardBatch batch;
      for (int i = 0; i < length; ++i) batch.tokens.push_back((i * 104729 + 13) % config.vocab_size);
      batch.chunks.push_back({0, length, true});
      const double start = now_seconds();
      backend->forward_on_device(batch);
      seconds.push_back(now_seconds() - start);
    }
    const double t = median(seconds);
    std::printf("%8d %10.2f %11.1f\n", length, t * 1e3, length / t);
    report["prefill"].push_back({{"tokens", length}, {"ms", t * 1e3}, {"tokens_per_s", length / t}});
  }

  // Profiling pass: eager forwards with CUDA events around each op class.
  std::printf("\nper-op GPU time (profiling pass, eager, events around each op class), us per step:\n");
  for (int batch : {1, 8, max_batch}) {
    if (batch > max_batch || (batch == max_batch && max_batch <= 8)) continue;
    prefill_slots(*backend, batch, options.context, backend_options.max_batch_tokens);
    std::vector<int32_t> tokens(batch, 1);
    backend->set_profiling(true);
    constexpr int kProfileSteps = 5;
    for (int step = 0; step < kProfileSteps; ++step) backend->forward_on_device(decode_batch(tokens));
    backend->set_profiling(false);
    const std::vector<KernelTime> times = backend->take_profile();
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
    backend->release(0);
    ForwardBatch batch;
    for (int i = 0; i < length; ++i) batch.tokens.push_back((i * 104729 + 13) % config.vocab_size);
    batch.chunks.push_back({0, length, true});
    backend->set_profiling(true);
    backend->forward_on_device(batch);
    backend->set_profiling(false);
    const std::vector<KernelTime> times = backend->take_profile();
    std::printf("  prefill %d:\n", length);
    for (const KernelTime& t : times) std::printf("    %-24s %10.1f us\n", t.op.c_str(), t.microseconds);
    report["kernels"]["prefill_" + std::to_string(length)] = profile_json(times, 1);
  }
  const GpuBackend::Counters counters = backend->counters();
  report["counters"] = {{"gemv_linear_calls", counters.gemv_linear_calls},
                        {"gemm_bf16_linear_calls", counters.gemm_bf16_linear_calls},
                        {"gemm_nvfp4_linear_calls", counters.gemm_nvfp4_linear_calls},
                        {"gemv_swiglu_calls", counters.gemv_swiglu_calls},
                        {"graph_captures", counters.graph_captures},
                        {"graph_replays", counters.graph_replays}};
  std::printf("\nlinear calls: GEMV %lld (gate/up with SwiGLU epilogue %lld), cuBLAS bf16 %lld, cuBLAS NVFP4 "
              "(dequantised) %lld; graph captures %lld, replays %lld\n",
              static_cast<long long>(counters.gemv_linear_calls), static_cast<long long>(counters.gemv_swiglu_calls),
              static_cast<long long>(counters.gemm_bf16_linear_calls),
              static_cast<long long>(counters.gemm_nvfp4_linear_calls), static_cast<long long>(counters.graph_captures),
              static_cast<long long>(counters.graph_replays));
  if (!options.json_path.empty()) {
    std::ofstream(options.json_path) << report.dump(2) << "\n";
    std::printf("wrote %s\n", options.json_path.c_str());
  }
}
#else
void run_bench(const BenchOptions&) { fail("bench: this binary was built without CUDA"); }
#endif

}  // namespace

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Decode and prefill speed on the GPU against the copy-bandwidth roofline");
  cmd->add_option("--shape", options->shape, "qwen3.5-27b, qwen3.5-9b or default (random weights made on the GPU)")
      ->capture_default_str();
  cmd->add_option("--weights", options->weights, "nvfp4 or bf16 for the synthetic linear layers")->capture_default_str();
  cmd->add_option("--model", options->model, "A checkpoint directory instead of a synthetic shape");
  cmd->add_option("--batches", options->batches, "Decode batch sizes")->delimiter(',')->capture_default_str();
  cmd->add_option("--prefill", options->prefill, "Prefill prompt lengths")->delimiter(',')->capture_default_str();
  cmd->add_option("--context", options->context, "Tokens per sequence before the timed decode steps")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--steps", options->steps, "Timed decode steps per batch")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--json", options->json_path, "Write the results as JSON");
  cmd->add_option("--tensor-parallel", options->tensor_parallel, "Shard the model over GPUs 0..N-1 (NCCL)")
      ->check(CLI::Range(1, 64))->capture_default_str();
  cmd->callback([options] {
    std::ostringstream command;  // the run's options as a command line, recorded in the JSON
    command << "uberlm bench --shape " << options->shape << " --weights " << options->weights;
    if (!options->model.empty()) command << " --model " << options->model;
    command << " --batches " << fmt::format("{}", fmt::join(options->batches, ","));
    command << " --prefill " << fmt::format("{}", fmt::join(options->prefill, ","));
    command << " --context " << options->context << " --steps " << options->steps;
    if (options->tensor_parallel > 1) command << " --tensor-parallel " << options->tensor_parallel;
    if (!options->json_path.empty()) command << " --json " << options->json_path;
    options->command = command.str();
    run_bench(*options);
  });
}

}  // namespace uberlm::cli
