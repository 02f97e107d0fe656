// `uberlm check` on the GPU: the production CUDA path (decode steps through their graphs, the snapshot copies
// captured in them) against the CPU decoder on the default model is clean within the bf16 bound of the GPU
// tests; against its own eager run it is equal on every layer; a weight changed in the GPU's model only is
// named by layer and tensor. The same against the CPU with --decode-path fused on NVFP4 weights.
#include <gtest/gtest.h>

#include <memory>
#include <optional>

#include "../planted_fault.h"
#include "backend_test_util.h"
#include "eval/check.h"
#include "gpu_test_util.h"
#include "model/model.h"
#include "model/quantize.h"
#include "runtime/cpu_backend.h"
#include "runtime/cuda_backend.h"

namespace uberlm {
namespace {

using gpu_test::default_model;
using gpu_test::require_gpu;

CheckOptions check_options(double tolerance) {
  CheckOptions options;
  options.prompt = {17, 320, 1041, 7, 2048, 99, 5, 3000, 12, 64, 4000, 1, 800, 42, 43, 44, 45, 46};
  options.decode_steps = 6;
  options.tolerance = tolerance;
  return options;
}

TEST(CheckGpu, DefaultModelAgreesWithTheCpuOnEveryLayer) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  CudaBackend candidate(*model, gpu_test::small_backend_options(1));
  CpuBackend reference(*model, 1);
  const CheckReport report = run_check(candidate, reference, check_options(3e-2));
  EXPECT_FALSE(report.divergence.has_value()) << report.to_json().dump();
  EXPECT_EQ(report.steps_checked, 7);
  EXPECT_GT(report.worst_error, 0.0);  // bf16 activations: not bit-equal to the fp32 CPU
  std::printf("check vs cpu: worst relative error %.3g over %lld tensors\n", report.worst_error,
              static_cast<long long>(report.tensors_compared));
}

TEST(CheckGpu, GraphReplayEqualsEagerOnEveryLayer) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  CudaBackend candidate(*model, gpu_test::small_backend_options(1)), eager(*model, gpu_test::small_backend_options(1));
  eager.set_cuda_graphs(false);
  const CheckReport report = run_check(candidate, eager, check_options(0.0));
  EXPECT_FALSE(report.divergence.has_value()) << report.to_json().dump();
  EXPECT_EQ(report.worst_error, 0.0);
  EXPECT_GT(candidate.counters().graph_replays, 0) << "the decode steps must have run through graphs";
}

TEST(CheckGpu, PlantedFaultInTheGpuModelIsNamed) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  auto faulty = Model::load(default_model());
  plant_fault(*faulty, 5);
  const auto model = Model::load(default_model());
  CudaBackend candidate(*faulty, gpu_test::small_backend_options(1));
  CpuBackend reference(*model, 1);
  const CheckReport report = run_check(candidate, reference, check_options(3e-2));
  ASSERT_TRUE(report.divergence.has_value());
  EXPECT_EQ(report.divergence->step, 0);
  EXPECT_EQ(report.divergence->layer, 5);
  EXPECT_EQ(report.divergence->tensor, "after_mlp");
}

// The default model with NVFP4 linear layers (quantised at load), with the planted fault at `fault_layer` first
// when it is set.
std::unique_ptr<Model> nvfp4_default_model(std::optional<int> fault_layer = std::nullopt) {
  auto model = Model::load(default_model());
  if (fault_layer) plant_fault(*model, *fault_layer);
  quantize_model_at_load(*model);
  return model;
}

// `candidate` on the CUDA backend with --decode-path fused against `reference` on the CPU decoder; the candidate's
// fused layers into `fused_layers`.
CheckReport check_fused_against_cpu(const Model& candidate, const Model& reference, int64_t& fused_layers) {
  CudaBackendOptions options = gpu_test::small_backend_options(1);
  options.decode_path = DecodePath::Fused;
  CudaBackend gpu(candidate, options);
  CpuBackend cpu(reference, 1);
  const CheckReport report = run_check(gpu, cpu, check_options(3e-2));
  fused_layers = gpu.counters().fused_decode_layers;
  return report;
}

// --decode-path fused, as production runs it (decode steps through their graphs), on the default model with NVFP4
// weights: every layer of the prefill and of each decode step, whose layers run the fused launches,
// within the bf16 bound of the CPU decoder; and a weight changed in the GPU's model only (layer 5 is a Gated
// DeltaNet layer) is named by layer and tensor.
TEST(CheckGpu, FusedDecodeAgreesWithTheCpuOnEveryLayer) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = nvfp4_default_model();
  int64_t fused_layers = 0;
  const CheckReport report = check_fused_against_cpu(*model, *model, fused_layers);
  EXPECT_FALSE(report.divergence.has_value()) << report.to_json().dump();
  EXPECT_EQ(report.steps_checked, 7);
  EXPECT_GT(fused_layers, 0) << "the decode steps must have run the fused launches";
  std::printf("check fused vs cpu: worst relative error %.3g over %lld tensors\n", report.worst_error,
              static_cast<long long>(report.tensors_compared));
}

TEST(CheckGpu, PlantedFaultOnTheFusedPathIsNamed) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto faulty = nvfp4_default_model(5), model = nvfp4_default_model();
  int64_t fused_layers = 0;
  const CheckReport report = check_fused_against_cpu(*faulty, *model, fused_layers);
  ASSERT_TRUE(report.divergence.has_value());
  EXPECT_EQ(report.divergence->step, 0);
  EXPECT_EQ(report.divergence->layer, 5);
  EXPECT_EQ(report.divergence->tensor, "after_mlp");
}

}  // namespace
}  // namespace uberlm
