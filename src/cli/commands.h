#pragma once
// Each subcommand registers its options and its action on the top-level CLI11 app.
#include <CLI/CLI.hpp>

#include "model/config.h"
#include "runtime/cuda_backend.h"

namespace uberlm::cli {

void add_run_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_tune_command(CLI::App& app);
void add_check_command(CLI::App& app);
// --tuning-table and --strict, the CUDA backend's GEMV tuning choices, on a command.
void add_tuning_options(CLI::App& cmd, std::string& tuning_table, bool& strict);
// --deterministic: batch-invariant forwards on the CUDA backend (CudaBackendOptions::deterministic).
void add_deterministic_option(CLI::App& cmd, bool& deterministic);
// --no-small-m-gemm: 17..128-row NVFP4 products on the GEMV or dequantised weights (CudaBackendOptions::small_m_gemm).
void add_small_m_gemm_option(CLI::App& cmd, bool& small_m_gemm);
// --decode-path unfused|fused|auto: which decode steps take the fused kernels (CudaBackendOptions::decode_path).
void add_decode_path_option(CLI::App& cmd, DecodePath& decode_path);
// Registers `gsm8k` under the `eval` subcommand.
void add_eval_gsm8k_command(CLI::App& eval);
// Registers `ppl` under the `eval` subcommand.
void add_eval_ppl_command(CLI::App& eval);

// The model used when --model is not given: $UBERLM_MODEL, else the default model shipped in the repo.
std::string default_model_dir();
// --shape NAME: a named shape (model/shapes.h), or "default", the default model's config.
ModelConfig shape_config(const std::string& name);

}  // namespace uberlm::cli
