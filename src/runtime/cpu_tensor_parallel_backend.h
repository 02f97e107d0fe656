#pragma once
// Tensor parallelism on the CPU: N rank decoders, each on its shard of the model (model/tensor_parallel.h),
// run in N threads and exchange partial sums through an in-process group that adds them in rank order. It
// checks the sharding end to end against the whole model (logits equal up to fp32 summation order) where
// no multi-GPU machine is at hand, and serves `--device cpu --tensor-parallel N`.
#include <memory>
#include <vector>

#include "model/decoder_cpu.h"
#include "model/model.h"
#include "model/tensor_parallel.h"
#include "runtime/backend.h"
#include "runtime/cpu_cache_slots.h"

namespace uberlm {

// The collectives of `size` threads of one process; every member must call each collective.
class InProcessGroup {
 public:
  explicit InProcessGroup(int size);
  ~InProcessGroup();
  HostCollectives& member(int rank);

 private:
  struct State;
  class Member;
  std::unique_ptr<State> state_;
  std::vector<std::unique_ptr<Member>> members_;
};

class CpuTensorParallelBackend : public Backend {
 public:
  // Throws Error naming the config field when the model does not shard over `size` ranks.
  CpuTensorParallelBackend(const Model& model, int max_slots, int size, int max_prefix_snapshots = 0);
  ~CpuTensorParallelBackend() override;

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return model_.config; }
  int max_slots() const override { return max_slots_; }
  void release(int slot) override;
  ForwardResult forward(const ForwardBatch& batch) override;
  // A snapshot is every rank's copy of its slot's cache.
  int max_prefix_snapshots() const override { return ranks_.front()->slots->prefix_snapshots(); }
  void restore_prefix(int snapshot, int slot) override;
  void drop_prefix(int snapshot) override;

 private:
  struct Rank {
    TensorParallelShard shard;
    ModelConfig config;
    ShardedModelWeights weights;
    std::unique_ptr<CpuDecoder> decoder;
    std::unique_ptr<CpuCacheSlots> slots;
  };
  const Model& model_;
  int max_slots_;
  InProcessGroup group_;
  std::vector<std::unique_ptr<Rank>> ranks_;
};

}  // namespace uberlm
