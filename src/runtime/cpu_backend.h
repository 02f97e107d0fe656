#pragma once
// The CPU backend: the reference decoder with per-slot caches held in host memory (CpuCacheSlots).
#include <memory>
#include <vector>

#include "model/decoder_cpu.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/cpu_cache_slots.h"

namespace uberlm {

class CpuBackend : public Backend {
 public:
  CpuBackend(const Model& model, int max_slots, int max_prefix_snapshots = 0);

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return model_.config; }
  int max_slots() const override { return slots_.slots(); }
  void release(int slot) override { slots_.release(slot); }
  ForwardResult forward(const ForwardBatch& batch) override;
  int max_prefix_snapshots() const override { return slots_.prefix_snapshots(); }
  void restore_prefix(int snapshot, int slot) override { slots_.restore(snapshot, slot); }
  void drop_prefix(int snapshot) override { slots_.drop(snapshot); }
  ForwardResult forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) override;

 private:
  ForwardResult run(const ForwardBatch& batch, ForwardSnapshot* snapshot);

  const Model& model_;
  CpuDecoder decoder_;
  CpuCacheSlots slots_;
};

}  // namespace uberlm
