#pragma once
// Each subcommand registers its options and its action on the top-level CLI11 app.
#include <CLI/CLI.hpp>

namespace uberlm::cli {

void add_run_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);
// Registers `gsm8k` under the `eval` subcommand.
void add_eval_gsm8k_command(CLI::App& eval);

// The model used when --model is not given: $UBERLM_MODEL, else the default model shipped in the repo.
std::string default_model_dir();

}  // namespace uberlm::cli
