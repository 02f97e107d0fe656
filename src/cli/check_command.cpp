// `uberlm check`: options of the layer-by-layer check (eval/check.h).
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "core/error.h"
#include "eval/check.h"

namespace uberlm::cli {

void add_check_command(CLI::App& app) {
  auto options = std::make_shared<CheckCommand>();
  auto json_path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "check", "The production CUDA path against a reference, step by step and layer by layer; stops at the first divergence");
  cmd->add_option("--model", options->model, "Checkpoint directory (reference: the CPU decoder)");
  cmd->add_option("--shape", options->shape_name, "Or a model shape with random weights (reference: cuda-eager)");
  cmd->add_option("--weights", options->weights, "With --shape: nvfp4 or bf16")
      ->check(CLI::IsMember({"nvfp4", "bf16"}))->capture_default_str();
  cmd->add_option("--reference", options->reference, "cpu or cuda-eager")
      ->check(CLI::IsMember({"cpu", "cuda-eager"}))->capture_default_str();
  cmd->add_option("--prompt", options->prompt, "Prompt text")->capture_default_str();
  cmd->add_option("--steps", options->steps, "Greedy decode steps after the prefill")
      ->check(CLI::Range(0, 4096))->capture_default_str();
  cmd->add_option("--tolerance", options->tolerance,
                  "Bound on max|candidate - reference| / max|reference| per tensor (default: 0 for the unfused path "
                  "against cuda-eager, else 3e-2)");
  cmd->add_option("--divergence-file", options->divergence_file,
                  "Where the diverging layer's tensors of both sides go (safetensors)")->capture_default_str();
  cmd->add_option("--json", *json_path, "Also write the report here");
  cmd->add_option("--tuning-table", options->tuning_table, "CUDA: the GEMV winners table (default: this GPU's)");
  add_decode_path_option(*cmd, options->decode_path);
  cmd->callback([options, json_path] {
    if (options->model.empty() == options->shape_name.empty()) fail("check: give --model or --shape");
    if (options->model.empty()) {
      options->shape = shape_config(options->shape_name);
      if (options->reference == "cpu") options->reference = "cuda-eager";
    }
    const nlohmann::json report = run_check_command(*options);
    std::printf("%s\n", report.dump(2).c_str());
    if (!json_path->empty()) {
      std::ofstream out(*json_path);
      if (!(out << report.dump(2) << "\n")) fail("check: cannot write {}", *json_path);
    }
    if (!report["clean"].get<bool>()) fail("check: diverged (see the report above)");
  });
}

}  // namespace uberlm::cli
