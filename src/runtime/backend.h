#pragma once
// What the engine asks of a backend (CPU reference or CUDA): run the decoder over a batch of token
// runs, each continuing one sequence whose caches the backend keeps in a numbered slot. Plain data
// in, logits out: the scheduler builds ForwardBatch without knowing which backend runs it, and it alone
// knows each sequence's tokens and KV blocks (every run carries its start position and block table).
//
// Full-attention keys and values live either in the backend's own per-slot caches (the CPU backend), or
// in a paged pool whose blocks the scheduler hands out: then the backend reports the pool
// (kv_block_pool()), and writes and reads exactly the blocks each run's table names.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/forward_batch.h"

namespace uberlm {

// Tokens per KV block: one size for the scheduler's block tables and every paged pool.
inline constexpr int kKvBlockSize = 16;

// The paged KV pool a scheduler allocates from: block ids 0..num_blocks-1 of kKvBlockSize tokens.
struct KvBlockPool {
  int64_t num_blocks = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual const ModelConfig& config() const = 0;
  // Cache slots 0..max_slots()-1. A run at start 0 begins its slot afresh; release() gives back the
  // memory a slot holds (host caches) once its sequence is gone.
  virtual int max_slots() const = 0;
  virtual void release(int slot) = 0;
  // The pool whose block tables forward() expects in SequenceChunk::block_table; nullopt when the
  // backend keeps its own caches per slot.
  virtual std::optional<KvBlockPool> kv_block_pool() const { return std::nullopt; }
  // The most positions one sequence may have here when the backend bounds them itself (the CUDA backend: what
  // it planned at load, at most what its KV pool holds); 0: no bound of its own.
  virtual int64_t max_context() const { return 0; }
  virtual ForwardResult forward(const ForwardBatch& batch) = 0;
  // Prefix snapshots (runtime/prefix_cache.h), ids 0..max_prefix_snapshots()-1; none (0) by default.
  // forward() saves one where a run asks for it (SequenceChunk::prefix_save_snapshot), also between the
  // run's tokens; restore_prefix makes `slot` hold it, so the slot's next run starts at the prefix's
  // length; drop_prefix frees it. A backend with a paged pool keeps only the slot's own states: the
  // prefix's keys and values stay in the blocks the scheduler holds for it.
  virtual int max_prefix_snapshots() const { return 0; }
  virtual void restore_prefix(int snapshot, int slot);
  virtual void drop_prefix(int snapshot);
  // forward() that also records every layer's outputs and the first chunk's caches (`uberlm check`).
  virtual ForwardResult forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot);
};

// Throws Error naming `backend` and the slot when a run's prefix save names no snapshot the backend keeps
// or no place in the run.
void check_prefix_save(const SequenceChunk& chunk, int max_prefix_snapshots, const std::string& backend);

}  // namespace uberlm
