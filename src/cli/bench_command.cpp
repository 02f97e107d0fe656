// `uberlm bench`: options of the speed benchmark (eval/speed_bench.h).
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "core/error.h"
#include "eval/speed_bench.h"

namespace uberlm::cli {

namespace {

// The run's options as a command line, recorded in the report.
std::string command_line(const SpeedBenchOptions& options, const std::string& json_path) {
  std::ostringstream command;
  command << "uberlm bench --shape " << options.shape_name << " --weights " << options.weights;
  if (!options.model.empty()) command << " --model " << options.model;
  command << " --batches " << fmt::format("{}", fmt::join(options.batches, ","));
  command << " --prefill " << fmt::format("{}", fmt::join(options.prefill, ","));
  command << " --context " << options.context << " --steps " << options.steps;
  if (options.tensor_parallel > 1) command << " --tensor-parallel " << options.tensor_parallel;
  if (!options.tuning_table.empty()) command << " --tuning-table " << options.tuning_table;
  if (options.strict) command << " --strict";
  if (options.deterministic) command << " --deterministic";
  if (!options.small_m_gemm) command << " --no-small-m-gemm";
  if (options.decode_path != DecodePath::Unfused) command << " --decode-path " << decode_path_name(options.decode_path);
  if (!json_path.empty()) command << " --json " << json_path;
  return command.str();
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<SpeedBenchOptions>();
  auto json_path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("bench", "Decode and prefill speed on the GPU against the copy-bandwidth roofline");
  cmd->add_option("--shape", options->shape_name, "qwen3.5-27b, qwen3.5-9b or default (random weights made on the GPU)")
      ->capture_default_str();
  cmd->add_option("--weights", options->weights, "nvfp4 or bf16 for the synthetic linear layers")
      ->check(CLI::IsMember({"nvfp4", "bf16"}))->capture_default_str();
  cmd->add_option("--model", options->model, "A checkpoint directory instead of a synthetic shape");
  cmd->add_option("--batches", options->batches, "Decode batch sizes")->delimiter(',')->capture_default_str();
  cmd->add_option("--prefill", options->prefill, "Prefill prompt lengths")->delimiter(',')->capture_default_str();
  cmd->add_option("--prefill-chunk", options->prefill_chunk,
                  "Prefill prompts in engine steps of at most this many tokens, as serve's --max-num-batched-tokens "
                  "(0: each prompt in one step)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--context", options->context, "Tokens per sequence before the timed decode steps")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--steps", options->steps, "Timed decode steps per batch")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--json", *json_path, "Write the results as JSON");
  cmd->add_option("--tensor-parallel", options->tensor_parallel, "Shard the model over GPUs 0..N-1 (NCCL)")
      ->check(CLI::Range(1, 64))->capture_default_str();
  add_tuning_options(*cmd, options->tuning_table, options->strict);
  add_deterministic_option(*cmd, options->deterministic);
  add_small_m_gemm_option(*cmd, options->small_m_gemm);
  add_decode_path_option(*cmd, options->decode_path);
  cmd->callback([options, json_path] {
    if (options->model.empty()) options->shape = shape_config(options->shape_name);
    options->command = command_line(*options, *json_path);
    const nlohmann::json report = run_speed_bench(*options);
    if (json_path->empty()) return;
    std::ofstream out(*json_path);
    if (!(out << report.dump(2) << "\n")) fail("bench: cannot write {}", *json_path);
    std::printf("wrote %s\n", json_path->c_str());
  });
}

}  // namespace uberlm::cli
