// `uberlm check`'s harness (eval/check.h) on the CPU: two CPU backends of the default model agree exactly,
// and a weight changed in the candidate only (one element of layer 5's down projection) is caught at the
// prefill, in layer 5, in the residual stream after its MLP (its mixer output still agrees), with both
// sides' tensors of that layer written to a safetensors file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "eval/check.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "planted_fault.h"
#include "runtime/cpu_backend.h"

namespace uberlm {
namespace {

std::filesystem::path default_model() { return std::filesystem::path(UBERLM_SOURCE_DIR) / "models" / "default"; }

CheckOptions options_for(const std::filesystem::path& file) {
  CheckOptions options;
  options.prompt = {17, 320, 1041, 7, 2048, 99, 5, 3000, 12, 64, 4000, 1, 800};
  options.decode_steps = 4;
  options.tolerance = 1e-6;  // the same fp32 code on the same inputs: equal unless a weight differs
  options.divergence_file = file;
  return options;
}

TEST(Check, IdenticalBackendsAreClean) {
  auto model = Model::load(default_model());
  CpuBackend candidate(*model, 1), reference(*model, 1);
  const CheckReport report = run_check(candidate, reference, options_for(""));
  EXPECT_FALSE(report.divergence.has_value());
  EXPECT_EQ(report.steps_checked, 5);
  EXPECT_EQ(report.worst_error, 0.0);
  // Per step: 8 layers' two residual snapshots, plus keys and values of the 2 attention layers and the conv
  // and recurrent states of the 6 Gated DeltaNet layers.
  EXPECT_EQ(report.tensors_compared, 5 * (8 * 2 + 2 * 2 + 6 * 2));
}

TEST(Check, PlantedFaultIsNamedByLayerAndTensor) {
  auto faulty = Model::load(default_model());
  plant_fault(*faulty, 5);
  auto model = Model::load(default_model());
  CpuBackend candidate(*faulty, 1), reference(*model, 1);
  const std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("uberlm_check_" + std::to_string(::getpid()) + ".safetensors");
  const CheckReport report = run_check(candidate, reference, options_for(file));
  ASSERT_TRUE(report.divergence.has_value());
  EXPECT_EQ(report.divergence->step, 0);
  EXPECT_EQ(report.divergence->layer, 5);
  EXPECT_EQ(report.divergence->tensor, "after_mlp");
  EXPECT_GT(report.divergence->error, 3e-2) << "the GPU tests detect it at their bf16 bound too";
  auto written = SafetensorsFile::open(file);
  EXPECT_TRUE(written->has("candidate.after_mlp"));
  EXPECT_TRUE(written->has("reference.after_mlp"));
  EXPECT_TRUE(written->has("reference.recurrent_state"));
  EXPECT_EQ(written->header().metadata.at("layer"), "5");
  std::filesystem::remove(file);
  EXPECT_EQ(report.to_json()["divergence"]["tensor"], "after_mlp");
}

}  // namespace
}  // namespace uberlm
