// `uberlm quantize`: a bf16 checkpoint to NVFP4 (W4A16, ModelOpt layout).
#include <fmt/format.h>

#include "cli/commands.h"
#include "model/quantize.h"

namespace uberlm::cli {

void add_quantize_command(CLI::App& app) {
  auto options = std::make_shared<QuantizeOptions>();
  auto extra_exclusions = std::make_shared<std::vector<std::string>>();
  auto no_default_exclusions = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("quantize", "Quantise a bf16 checkpoint's linear layers to NVFP4 (ModelOpt layout)");
  cmd->add_option("--model", options->model_dir, "bf16 checkpoint directory")->required();
  cmd->add_option("--out", options->out_dir, "Output checkpoint directory")->required();
  cmd->add_option("--exclude", *extra_exclusions,
                  "Keep tensors whose name this regex finds unquantised (repeatable; added to the defaults: " +
                      fmt::format("{}", fmt::join(default_nvfp4_exclusions(), ", ")) + ")");
  cmd->add_flag("--no-default-excludes", *no_default_exclusions, "Drop the default exclusions");
  cmd->add_flag("--force", options->force, "Replace --out when it exists");
  cmd->callback([options, extra_exclusions, no_default_exclusions] {
    QuantizeOptions run = *options;
    if (*no_default_exclusions) run.exclude.clear();
    run.exclude.insert(run.exclude.end(), extra_exclusions->begin(), extra_exclusions->end());
    const QuantizeSummary summary = quantize_checkpoint(run);
    for (const std::string& folder : summary.removed_stale_folders) {
      fmt::print("removed {}, left by an earlier quantize that was killed\n", folder);
    }
    fmt::print("quantised {} tensors to NVFP4, kept {}; tensor data {:.1f} MiB -> {:.1f} MiB; wrote {}\n",
               summary.quantised_tensors, summary.kept_tensors, summary.bytes_in / 1048576.0,
               summary.bytes_out / 1048576.0, run.out_dir.string());
  });
}

}  // namespace uberlm::cli
