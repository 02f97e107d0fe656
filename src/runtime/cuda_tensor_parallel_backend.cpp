#include "runtime/cuda_tensor_parallel_backend.h"

#ifdef UBERLM_WITH_CUDA
#include <exception>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "model/tensor_parallel.h"
#include "ops/cuda/cuda_check.h"

namespace uberlm {

CudaTensorParallelBackend::CudaTensorParallelBackend(const Model& model, int size, const CudaBackendOptions& options)
    : config_(model.config), threads_(size) {
  build_ranks(size, options, [&](const TensorParallelShard& shard, const CudaBackendOptions& rank_options) {
    const ShardedModelWeights weights = shard_model_weights(model.weights, model.config, shard);
    return std::make_unique<CudaBackend>(shard_config(model.config, shard), weights.weights, rank_options);
  });
}

CudaTensorParallelBackend::CudaTensorParallelBackend(const ModelConfig& config, SyntheticFormat format, int size,
                                                     const CudaBackendOptions& options, uint64_t seed)
    : config_(config), threads_(size) {
  build_ranks(size, options, [&](const TensorParallelShard& shard, const CudaBackendOptions& rank_options) {
    return std::make_unique<CudaBackend>(shard_config(config, shard), format, rank_options, seed + shard.rank);
  });
}

template <typename MakeRank>
void CudaTensorParallelBackend::build_ranks(int size, const CudaBackendOptions& options, MakeRank&& make_rank) {
  std::vector<TensorParallelShard> shards;
  for (int r = 0; r < size; ++r) shards.push_back(plan_tensor_parallel_shard(config_, size, r));
  communicators_ = NcclCommunicator::create_group(size);
  CudaBackendOptions rank_options = options;
  for (int r = 0; r < size; ++r) {
    CUDA_CHECK(cudaSetDevice(r));
    rank_options.communicator = communicators_[r].get();
    ranks_.push_back(make_rank(shards[r], rank_options));
    // The scheduler's block ids must mean the same on every rank: the others take rank 0's pool size.
    if (r == 0) rank_options.num_kv_blocks = ranks_.front()->kv_block_pool()->num_blocks;
  }
  CUDA_CHECK(cudaSetDevice(0));
  spdlog::info("tensor parallel: {} ranks on GPUs 0..{}", size, size - 1);
}

CudaTensorParallelBackend::~CudaTensorParallelBackend() {
  // Each rank's memory and graphs are freed with its device current, before the communicators go.
  for (int r = size() - 1; r >= 0; --r) {
    cudaSetDevice(r);
    ranks_[r].reset();
  }
  cudaSetDevice(0);
}

template <typename Fn>
void CudaTensorParallelBackend::on_every_rank(Fn&& fn) {
  // Every rank checks the same batch the same way, so a bad batch fails on all of them before any
  // collective, and no rank waits in NCCL for one that gave up.
  std::vector<std::exception_ptr> errors(ranks_.size());
  threads_.parallel_for(size(), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      try {
        CUDA_CHECK(cudaSetDevice(static_cast<int>(r)));
        fn(static_cast<int>(r));
      } catch (...) {
        errors[r] = std::current_exception();
      }
    }
  });
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

ForwardResult CudaTensorParallelBackend::forward(const ForwardBatch& batch) {
  std::vector<ForwardResult> results(ranks_.size());
  on_every_rank([&](int r) { results[r] = ranks_[r]->forward(batch); });
  return std::move(results.front());
}

void CudaTensorParallelBackend::restore_prefix(int snapshot, int slot) {
  on_every_rank([&](int r) { ranks_[r]->restore_prefix(snapshot, slot); });
}

void CudaTensorParallelBackend::drop_prefix(int snapshot) {
  on_every_rank([&](int r) { ranks_[r]->drop_prefix(snapshot); });
}

void CudaTensorParallelBackend::set_profiling(bool enabled) {
  for (auto& rank : ranks_) rank->set_profiling(enabled);
}

std::vector<KernelTime> CudaTensorParallelBackend::take_profile() {
  std::vector<KernelTime> times = ranks_.front()->take_profile();
  for (size_t r = 1; r < ranks_.size(); ++r) ranks_[r]->take_profile();
  return times;
}

int64_t CudaTensorParallelBackend::weight_bytes() const {
  int64_t bytes = 0;
  for (const auto& rank : ranks_) bytes += rank->weight_bytes();
  return bytes;
}

int64_t CudaTensorParallelBackend::cache_bytes_per_token(int64_t context) const {
  int64_t bytes = 0;
  for (const auto& rank : ranks_) bytes += rank->cache_bytes_per_token(context);
  return bytes;
}

GpuBackend::Counters CudaTensorParallelBackend::counters() const { return ranks_.front()->counters(); }

std::string CudaTensorParallelBackend::memory_summary() const {
  return fmt::format("{} GPUs, each: {}", ranks_.size(), ranks_.front()->memory_summary());
}

}  // namespace uberlm
#endif
