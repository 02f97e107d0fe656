#pragma once
// The CPU backend: the reference decoder with per-slot caches held in host memory. A prefix snapshot is a
// copy of a slot's whole cache (keys and values included: there is no paged pool to share them from).
#include <memory>
#include <vector>

#include "model/decoder_cpu.h"
#include "model/model.h"
#include "runtime/backend.h"

namespace uberlm {

class CpuBackend : public Backend {
 public:
  CpuBackend(const Model& model, int max_slots, int max_prefix_snapshots = 0);

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return model_.config; }
  int max_slots() const override { return static_cast<int>(caches_.size()); }
  void release(int slot) override;
  ForwardResult forward(const ForwardBatch& batch) override;
  int max_prefix_snapshots() const override { return static_cast<int>(snapshots_.size()); }
  void save_prefix(int slot, int snapshot) override;
  void restore_prefix(int snapshot, int slot) override;
  void drop_prefix(int snapshot) override;
  ForwardResult forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) override;

 private:
  ForwardResult run(const ForwardBatch& batch, ForwardSnapshot* snapshot);

  const Model& model_;
  CpuDecoder decoder_;
  std::vector<CpuSequenceCache> caches_;
  std::vector<CpuSequenceCache> snapshots_;
};

}  // namespace uberlm
