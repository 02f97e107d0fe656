// `uberlm tune`: options of the GEMV winners table (eval/gemv_tune.h).
#include <sstream>

#include "cli/commands.h"
#include "eval/gemv_tune.h"

namespace uberlm::cli {

void add_tune_command(CLI::App& app) {
  auto options = std::make_shared<GemvTuneOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tune", "Time every compiled tuning of the decode GEMV launches a model makes on this GPU; write the winners table");
  cmd->add_option("--shape", options->shape_name, "qwen3.5-27b, qwen3.5-9b or default (random weights made on the GPU)")
      ->capture_default_str();
  cmd->add_option("--weights", options->weights, "nvfp4 or bf16 for the synthetic linear layers")
      ->check(CLI::IsMember({"nvfp4", "bf16"}))->capture_default_str();
  cmd->add_option("--model", options->model, "A checkpoint directory instead of a synthetic shape");
  cmd->add_option("--out", options->out, "Where to write the table (default: this GPU's table in the user cache, "
                                         "$UBERLM_CACHE_DIR or $XDG_CACHE_HOME/uberlm or ~/.cache/uberlm)");
  cmd->add_option("--iters", options->iters, "Timed launches per tuning")->check(CLI::Range(5, 10000))->capture_default_str();
  cmd->callback([options] {
    if (options->model.empty()) options->shape = shape_config(options->shape_name);
    std::ostringstream command;
    command << "uberlm tune " << (options->model.empty() ? "--shape " + options->shape_name + " --weights " + options->weights
                                                         : "--model " + options->model)
            << " --iters " << options->iters;
    if (!options->out.empty()) command << " --out " << options->out;
    options->command = command.str();
    run_gemv_tune(*options);
  });
}

}  // namespace uberlm::cli
