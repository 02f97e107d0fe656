#pragma once
// The CPU backend: the reference decoder with per-slot caches held in host memory.
#include <memory>
#include <vector>

#include "model/decoder_cpu.h"
#include "model/model.h"
#include "runtime/backend.h"

namespace uberlm {

class CpuBackend : public Backend {
 public:
  CpuBackend(const Model& model, int max_slots);

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return model_.config; }
  int max_slots() const override { return static_cast<int>(caches_.size()); }
  void release(int slot) override;
  ForwardResult forward(const ForwardBatch& batch) override;
  ForwardResult forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) override;

 private:
  ForwardResult run(const ForwardBatch& batch, ForwardSnapshot* snapshot);

  const Model& model_;
  CpuDecoder decoder_;
  std::vector<CpuSequenceCache> caches_;
};

}  // namespace uberlm
