#pragma once
// `uberlm tune`: the decode GEMV's winners table (runtime/cuda/gemv_tuning_table.h) for a model on the
// present GPU. The model's decode steps are run at every batch bucket (1, 2, 4 .. 64 sequences) to record
// which GEMV launches (kernel, N, K) it makes; then every compiled tuning of each launch is timed on random
// weights of its shape (enough copies that L2 holds none of them), against the copy bandwidth measured in
// the same run, and the fastest becomes the cell's winner. The built-in tuning is among those timed, so a
// winner is never slower than it in the same run.
#include <filesystem>
#include <string>

#include "model/config.h"

namespace uberlm {

struct GemvTuneOptions {
  std::string shape_name = "qwen3.5-27b";
  ModelConfig shape;            // the synthetic model, when no checkpoint is given
  std::string weights = "nvfp4";
  std::string model;            // a checkpoint instead of a shape
  std::string out;              // default: this GPU's table at the default place
  int iters = 100;              // timed launches per tuning
  std::string command;          // recorded in the table
};

// Writes the table and returns where.
std::filesystem::path run_gemv_tune(const GemvTuneOptions& options);

}  // namespace uberlm
