#pragma once
// Continuous batching as plain data: which sequences run this step and how many of their tokens.
// Each step first continues the running sequences (one decode token each, or the next chunk of a
// prefill) in admission order, then admits waiting ones while the token budget, max_num_seqs, a free
// cache slot and free KV blocks allow. A sequence is a token list (prompt + generated) and a count of
// tokens already in its caches: prefill and decode are the same thing, "compute the missing tokens",
// and a step samples a sequence's next token only when its chunk reaches the end of the list.
// When KV blocks run out, the newest running sequence is preempted: its caches are freed and it goes
// back to the front of the queue to be recomputed later (its generated tokens are kept).
// Each chunk of a step carries its sequence's block table: a backend with a paged KV pool
// (Backend::kv_block_pool) stores and reads the sequence's keys and values in exactly those blocks.
// With prefix caching (prefix_cache.h), a prefill chunk that would pass the sequence's save point (the
// last block boundary before its last token) ends there, so the backend's caches after that chunk are
// the prefix's: the step asks for them to be saved. An admitted sequence starts from the longest cached
// prefix of its tokens, sharing its blocks (reference counts in BlockManager). Cached prefixes are
// evicted, least recently used first, before any running sequence is preempted.
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "runtime/backend.h"
#include "runtime/id_pool.h"
#include "runtime/prefix_cache.h"

namespace uberlm {

struct SchedulerConfig {
  int max_num_seqs = 16;
  int64_t max_num_batched_tokens = 512;  // tokens of all chunks of one step
  int64_t max_model_len = 4096;          // prompt + generated, per sequence
  int64_t num_kv_blocks = 0;             // must hold at least one max_model_len sequence; at most the backend's pool
  int num_slots = 0;                     // backend cache slots: one per running sequence (its GDN state)
  int prefix_snapshots = 0;              // prefix caching: the backend's snapshot ids (0: no prefix caching)
};

// Paged accounting of the KV cache (blocks of kKvBlockSize tokens, ids into one pool) and of the cache
// slots holding each running sequence's Gated DeltaNet state. Blocks are taken as a sequence grows; a
// block of a cached prefix has several holders (the cache entry, the sequences sharing it) and goes
// back to the pool when the last one frees it.
class BlockManager {
 public:
  BlockManager(int64_t num_kv_blocks, int num_slots);

  static int64_t blocks_for(int64_t tokens) { return (tokens + kKvBlockSize - 1) / kKvBlockSize; }
  // Grows `table` to cover `tokens`; false (and `table` unchanged) when the pool is short.
  bool grow(std::vector<int>& table, int64_t tokens);
  // One more holder of blocks in use.
  void retain(const std::vector<int>& blocks);
  // Drops the table's hold on its blocks and empties it.
  void free(std::vector<int>& table);
  std::optional<int> take_slot() { return slots_.take(); }
  void free_slot(int slot) { slots_.give_back(slot); }

  int64_t kv_blocks_used() const { return num_kv_blocks_ - static_cast<int64_t>(free_blocks_.size()); }
  int64_t kv_blocks_total() const { return num_kv_blocks_; }
  int slots_used() const { return slots_.used(); }
  int slots_total() const { return slots_.total(); }

 private:
  int64_t num_kv_blocks_;
  std::vector<int> free_blocks_;  // stack: the most recently freed block is reused first
  std::vector<int> holders_;      // per block
  IdPool slots_;
};

// One chunk of a step: tokens [first_token, first_token + num_tokens) of sequence `id`, with the logits
// rows of its SequenceChunk in the batch.
struct ScheduledChunk {
  uint64_t id = 0;
  int64_t first_token = 0;
  int64_t num_tokens = 0;
  bool samples = false;  // the chunk ends at the sequence's last token: sample the next one
};

struct SchedulerOutput {
  ForwardBatch batch;                  // chunk i of batch is chunks[i]
  std::vector<ScheduledChunk> chunks;
  std::vector<int> released_slots;     // slots of sequences preempted this step: empty them before the forward
  std::vector<uint64_t> preempted;
  int64_t num_decode_tokens = 0;       // tokens of single-token chunks that sample
  int64_t num_prefill_tokens = 0;      // every other token (prompts, recomputation after preemption)

  // Prefix caching, in the order the engine carries it out: restores, drops, then the forward, whose
  // chunks carry the saves (SequenceChunk::prefix_save_snapshot).
  struct PrefixRestore {
    int snapshot;
    int slot;  // an admitted sequence's slot: it starts from the snapshot
  };
  std::vector<PrefixRestore> prefix_restores;
  std::vector<int> dropped_snapshots;  // evicted entries'
  int64_t prefix_queried_tokens = 0;   // tokens of the admitted sequences that looked up a prefix
  int64_t prefix_hit_tokens = 0;       // of those, tokens a cached prefix skipped
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);

  // Queues a new sequence. With score_prompt, every chunk that holds prompt tokens asks for the logits of
  // all its tokens (prompt logprobs, perplexity), also when recomputed after preemption. Throws Error on an
  // empty prompt, a prompt longer than max_model_len or a duplicate id.
  void add(uint64_t id, std::vector<int32_t> prompt, bool score_prompt = false);
  SchedulerOutput schedule();
  // The token sampled for a chunk that `samples`.
  void append_token(uint64_t id, int32_t token);
  // Forgets a finished or cancelled sequence; returns its slot, which the caller must empty.
  std::optional<int> remove(uint64_t id);
  // The saves the last schedule() asked for have run (the engine calls it after them; schedule() too, for
  // callers without an engine): its prefixes become visible to lookups.
  void confirm_prefix_saves();
  // The last schedule()'s forward failed: its prefix saves never happened.
  void abandon_prefix_saves();

  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  bool contains(uint64_t id) const;
  int64_t length(uint64_t id) const;  // prompt + generated tokens
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  const BlockManager& blocks() const { return blocks_; }
  int64_t num_cached_prefixes() const { return prefix_cache_.size(); }
  const SchedulerConfig& config() const { return config_; }

 private:
  struct Sequence {
    uint64_t id = 0;
    std::vector<int32_t> tokens;  // prompt + generated
    int64_t prompt_length = 0;
    bool score_prompt = false;
    int64_t num_computed = 0;     // tokens in the caches
    int slot = -1;
    std::vector<int> block_table;
    // Prefix caching while it decodes: a snapshot of its caches at the last block boundary it reached,
    // published as a cached prefix (its prompt and output so far) when it finishes, so the next turn of
    // a conversation starts after its reply.
    int rolling_snapshot = -1;
    int64_t rolling_length = 0;
    bool rolling_saved = false;  // the forward that saved it has run
  };

  void preempt(Sequence& sequence, SchedulerOutput& out);
  void emit(Sequence& sequence, int64_t num_tokens, SchedulerOutput& out);
  // Admits the front of the queue with a chunk of at most `budget` tokens, starting it from a cached
  // prefix when there is one; false (the sequence still waiting, nothing held) when blocks are short.
  bool admit_front(int64_t budget, SchedulerOutput& out);
  // Grows the table, evicting cached prefixes while blocks are short; false when that is not enough.
  bool grow_evicting(std::vector<int>& table, int64_t tokens, SchedulerOutput& out);

  // Prefix caching.
  bool caches_prefixes() const { return prefix_cache_.enabled(); }
  // The prefix length saved for the sequence: its last block boundary before its last token (0 with
  // caching off). Only tokens before it are ever cached, so a lookup always leaves a token to compute.
  int64_t prefix_save_point(const Sequence& sequence) const;
  bool prefix_cached_or_saving(const Sequence& sequence, int64_t length) const;
  // After emit(): asks for the sequence's prefix to be saved when its chunk reached the save point (the
  // save is taken inside the run, which is not cut there), or for its rolling snapshot when it ended at a
  // later block boundary.
  void save_prefix_if_due(Sequence& sequence, SchedulerOutput& out);
  void save_rolling_snapshot(Sequence& sequence, SchedulerOutput& out);
  // The last emitted chunk saves the caches after the sequence's first `length` tokens as `snapshot`.
  void save_in_last_chunk(int64_t length, int snapshot, SchedulerOutput& out);
  // A finished sequence's rolling snapshot becomes a cached prefix; a preempted one's is given back.
  void publish_rolling_snapshot(Sequence& sequence);
  void give_back_rolling_snapshot(Sequence& sequence, std::vector<int>& drops);
  // Frees the least recently used entry (its snapshot dropped before this step's forward); false when none
  // is cached.
  bool evict_prefix(SchedulerOutput& out);
  // Frees an entry's blocks and snapshot; `drops`: out.dropped_snapshots inside a schedule(), else
  // snapshots_to_drop_ (dropped before the next step's forward).
  void free_prefix(PrefixEntry& entry, std::vector<int>& drops);
  // Snapshot ids go back to the pool with a drop that runs before any save into them.
  void give_back_snapshot(int snapshot, std::vector<int>& drops);
  Sequence* find(uint64_t id);
  const Sequence* find(uint64_t id) const;

  SchedulerConfig config_;
  BlockManager blocks_;
  std::deque<Sequence> waiting_;
  std::vector<Sequence> running_;  // admission order: the back is preempted first
  int64_t num_preemptions_ = 0;
  PrefixCache prefix_cache_;
  std::vector<PrefixEntry> saving_prefixes_;  // asked for by the last schedule(), published by the next
  std::vector<uint64_t> saving_rolling_;      // sequences whose rolling snapshot the last schedule() asked for
  std::vector<int> snapshots_to_drop_;        // given back between steps, dropped in the next step
};

}  // namespace uberlm
