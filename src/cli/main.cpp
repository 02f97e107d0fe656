// uberlm: one binary, one subcommand per verb.
#include <cstdio>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"uberlm: inference engine for Qwen3.5 hybrid and Llama-family models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "uberlm 0.1.0");
  uberlm::cli::add_run_command(app);
  uberlm::cli::add_inspect_command(app);
  uberlm::cli::add_bench_command(app);
  uberlm::cli::add_quantize_command(app);
  uberlm::cli::add_serve_command(app);
  uberlm::cli::add_tune_command(app);
  uberlm::cli::add_check_command(app);
  CLI::App* eval = app.add_subcommand("eval", "Score a model: perplexity (ppl) or GSM8K accuracy through a server (gsm8k)");
  eval->require_subcommand(1);
  uberlm::cli::add_eval_ppl_command(*eval);
  uberlm::cli::add_eval_gsm8k_command(*eval);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  } catch (const uberlm::Error& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "uberlm: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
