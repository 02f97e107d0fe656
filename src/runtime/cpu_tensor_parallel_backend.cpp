#include "runtime/cpu_tensor_parallel_backend.h"

#include <barrier>
#include <exception>
#include <thread>

#include "runtime/sampler.h"

namespace uberlm {

struct InProcessGroup::State {
  explicit State(int size) : size(size), barrier(size), posted(size) {}
  int size;
  std::barrier<> barrier;
  std::vector<const float*> posted;  // each rank's buffer of the current collective
};

class InProcessGroup::Member : public HostCollectives {
 public:
  Member(State& state, int rank) : state_(state), rank_(rank) {}
  int size() const override { return state_.size; }

  void all_reduce_sum(float* data, int64_t count) override {
    state_.posted[rank_] = data;
    state_.barrier.arrive_and_wait();
    // Every rank adds in rank order, so all get the same bits.
    std::vector<float> sum(state_.posted[0], state_.posted[0] + count);
    for (int r = 1; r < state_.size; ++r) {
      for (int64_t i = 0; i < count; ++i) sum[i] += state_.posted[r][i];
    }
    state_.barrier.arrive_and_wait();  // nobody overwrites its buffer while another still reads it
    std::copy(sum.begin(), sum.end(), data);
  }

  void all_gather(const float* local, int64_t count, float* gathered) override {
    state_.posted[rank_] = local;
    state_.barrier.arrive_and_wait();
    for (int r = 0; r < state_.size; ++r) std::copy(state_.posted[r], state_.posted[r] + count, gathered + r * count);
    state_.barrier.arrive_and_wait();
  }

 private:
  State& state_;
  int rank_;
};

InProcessGroup::InProcessGroup(int size) : state_(std::make_unique<State>(size)) {
  for (int r = 0; r < size; ++r) members_.push_back(std::make_unique<Member>(*state_, r));
}

InProcessGroup::~InProcessGroup() = default;

HostCollectives& InProcessGroup::member(int rank) { return *members_.at(rank); }

CpuTensorParallelBackend::CpuTensorParallelBackend(const Model& model, int max_slots, int size, int max_prefix_snapshots)
    : model_(model), max_slots_(max_slots), group_(size) {
  for (int r = 0; r < size; ++r) {
    auto rank = std::make_unique<Rank>();
    rank->shard = plan_tensor_parallel_shard(model.config, size, r);
    rank->config = shard_config(model.config, rank->shard);
    rank->weights = shard_model_weights(model.weights, model.config, rank->shard);
    rank->decoder = std::make_unique<CpuDecoder>(rank->config, rank->weights.weights, &group_.member(r));
    rank->slots = std::make_unique<CpuCacheSlots>(*rank->decoder, max_slots, max_prefix_snapshots);
    ranks_.push_back(std::move(rank));
  }
}

CpuTensorParallelBackend::~CpuTensorParallelBackend() = default;

void CpuTensorParallelBackend::release(int slot) {
  for (auto& rank : ranks_) rank->slots->release(slot);
}

void CpuTensorParallelBackend::restore_prefix(int snapshot, int slot) {
  for (auto& rank : ranks_) rank->slots->restore(snapshot, slot);
}

void CpuTensorParallelBackend::drop_prefix(int snapshot) {
  for (auto& rank : ranks_) rank->slots->drop(snapshot);
}

ForwardResult CpuTensorParallelBackend::forward(const ForwardBatch& batch) {
  // Every rank validates the same batch the same way, so an invalid one fails on all ranks before any
  // collective and no rank is left waiting at a barrier.
  std::vector<ForwardResult> results(ranks_.size());
  std::vector<std::exception_ptr> errors(ranks_.size());
  auto run_rank = [&](size_t r) {
    try {
      CpuCacheSlots& slots = *ranks_[r]->slots;
      for (const SequenceChunk& chunk : batch.chunks) check_prefix_save(chunk, slots.prefix_snapshots(), name());
      results[r] = ranks_[r]->decoder->forward(batch, slots.caches(), slots.prefixes());
    } catch (...) {
      errors[r] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (size_t r = 1; r < ranks_.size(); ++r) threads.emplace_back(run_rank, r);
  run_rank(0);
  for (std::thread& thread : threads) thread.join();
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  ForwardResult& result = results.front();
  if (batch.argmax_only) result.argmax = argmax_rows(result.logits, result.rows, model_.config.vocab_size);
  return std::move(result);
}

}  // namespace uberlm
