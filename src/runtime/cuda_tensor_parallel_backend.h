#pragma once
// Tensor parallelism on the GPUs of one host: rank r is a CudaBackend on GPU r holding its shard of the model
// (model/tensor_parallel.h) and an NCCL communicator (runtime/nccl_communicator.h); the ranks run each forward
// together, one thread each, every rank's decode step one CUDA graph with its all-reduces and the logits
// all-gather inside. Every rank ends a forward with the whole logits; rank 0's are returned.
#ifdef UBERLM_WITH_CUDA
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/nccl_communicator.h"

namespace uberlm {

class CudaTensorParallelBackend : public GpuBackend {
 public:
  // Rank r's slices of `model` are copied on the host and uploaded to GPU r, one rank at a time. Throws
  // Error when the model does not shard over `size` (naming the config field) or fewer GPUs are visible.
  CudaTensorParallelBackend(const Model& model, int size, const CudaBackendOptions& options);
  // Random weights for `config` (uberlm bench): each rank's shard made on its GPU.
  CudaTensorParallelBackend(const ModelConfig& config, SyntheticFormat format, int size,
                            const CudaBackendOptions& options, uint64_t seed);
  ~CudaTensorParallelBackend() override;

  std::string name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }
  int max_slots() const override { return ranks_.front()->max_slots(); }
  void release(int slot) override {}
  // Rank 0's pool; every rank has as many blocks and receives the same block tables.
  std::optional<KvBlockPool> kv_block_pool() const override { return ranks_.front()->kv_block_pool(); }
  // Every rank plans rank 0's pool size, so every rank's bound is rank 0's.
  int64_t max_context() const override { return ranks_.front()->max_context(); }
  ForwardResult forward(const ForwardBatch& batch) override;
  // Every rank keeps the snapshots of its own shard of the states, under the same ids.
  int max_prefix_snapshots() const override { return ranks_.front()->max_prefix_snapshots(); }
  void restore_prefix(int snapshot, int slot) override;
  void drop_prefix(int snapshot) override;

  void set_profiling(bool enabled) override;
  std::vector<KernelTime> take_profile() override;  // rank 0's op times (all ranks run the same ops)
  int64_t weight_bytes() const override;            // all ranks'
  int64_t cache_bytes_per_token(int64_t context) const override;  // all ranks'
  Counters counters() const override;               // rank 0's
  std::string memory_summary() const override;      // rank 0's, per GPU
  std::vector<gpu::GemvCell> gemv_cells() const override { return ranks_.front()->gemv_cells(); }
  std::vector<gpu::WgmmaCell> wgmma_cells() const override { return ranks_.front()->wgmma_cells(); }

  int size() const { return static_cast<int>(ranks_.size()); }
  CudaBackend& rank(int r) { return *ranks_.at(r); }

 private:
  // Plans the shards, makes the communicators, then make_rank(shard, options) on each rank's GPU in turn.
  template <typename MakeRank>
  void build_ranks(int size, const CudaBackendOptions& options, MakeRank&& make_rank);
  // fn(r) on rank r's thread with GPU r current; every rank runs, then the first error is rethrown.
  template <typename Fn>
  void on_every_rank(Fn&& fn);

  ModelConfig config_;
  std::vector<std::unique_ptr<NcclCommunicator>> communicators_;
  std::vector<std::unique_ptr<CudaBackend>> ranks_;
  ThreadPool threads_;
};

}  // namespace uberlm
#endif
