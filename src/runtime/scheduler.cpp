#include "runtime/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace uberlm {

BlockManager::BlockManager(int64_t num_kv_blocks, int num_slots)
    : num_kv_blocks_(num_kv_blocks), holders_(std::max<int64_t>(num_kv_blocks, 0), 0), slots_(std::max(num_slots, 0)) {
  if (num_kv_blocks < 0 || num_slots <= 0) {
    fail("scheduler: need kv blocks >= 0 and slots > 0, got {} and {}", num_kv_blocks, num_slots);
  }
  for (int64_t b = num_kv_blocks - 1; b >= 0; --b) free_blocks_.push_back(static_cast<int>(b));
}

bool BlockManager::grow(std::vector<int>& table, int64_t tokens) {
  const int64_t needed = blocks_for(tokens) - static_cast<int64_t>(table.size());
  if (needed <= 0) return true;
  if (needed > static_cast<int64_t>(free_blocks_.size())) return false;
  for (int64_t i = 0; i < needed; ++i) {
    table.push_back(free_blocks_.back());
    holders_[free_blocks_.back()] = 1;
    free_blocks_.pop_back();
  }
  return true;
}

void BlockManager::retain(const std::vector<int>& blocks) {
  for (int block : blocks) {
    if (holders_.at(block) == 0) fail("scheduler: block {} is free; only blocks in use can be shared", block);
    ++holders_[block];
  }
}

void BlockManager::free(std::vector<int>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    if (holders_.at(*it) == 0) fail("scheduler: block {} freed twice", *it);
    if (--holders_[*it] == 0) free_blocks_.push_back(*it);
  }
  table.clear();
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(config), blocks_(config.num_kv_blocks, config.num_slots), prefix_cache_(config.prefix_snapshots) {
  if (config.max_num_seqs <= 0 || config.max_num_batched_tokens <= 0 || config.max_model_len <= 0) {
    fail("scheduler: max_num_seqs, max_num_batched_tokens and max_model_len must be positive");
  }
  // A lone sequence must always fit, or preemption could not guarantee progress.
  if (config.num_kv_blocks < blocks_.blocks_for(config.max_model_len)) {
    fail("scheduler: {} KV blocks of {} tokens cannot hold one sequence of max_model_len {}", config.num_kv_blocks,
         kKvBlockSize, config.max_model_len);
  }
}

void Scheduler::add(uint64_t id, std::vector<int32_t> prompt, bool score_prompt) {
  if (prompt.empty()) fail("scheduler: sequence {} has an empty prompt", id);
  if (static_cast<int64_t>(prompt.size()) > config_.max_model_len) {
    fail("scheduler: sequence {} prompt of {} tokens exceeds max_model_len {}", id, prompt.size(),
         config_.max_model_len);
  }
  if (contains(id)) fail("scheduler: sequence {} already queued", id);
  Sequence sequence;
  sequence.id = id;
  sequence.prompt_length = static_cast<int64_t>(prompt.size());
  sequence.score_prompt = score_prompt;
  sequence.tokens = std::move(prompt);
  waiting_.push_back(std::move(sequence));
}

void Scheduler::emit(Sequence& sequence, int64_t num_tokens, SchedulerOutput& out) {
  const int64_t first = sequence.num_computed;
  const bool samples = first + num_tokens == static_cast<int64_t>(sequence.tokens.size());
  const bool scores = sequence.score_prompt && first < sequence.prompt_length;
  out.batch.tokens.insert(out.batch.tokens.end(), sequence.tokens.begin() + first,
                          sequence.tokens.begin() + first + num_tokens);
  out.batch.chunks.push_back(SequenceChunk{.slot = sequence.slot,
                                           .start = first,
                                           .num_tokens = num_tokens,
                                           .logits = scores ? LogitRows::All : samples ? LogitRows::Last : LogitRows::None,
                                           .block_table = sequence.block_table});
  out.chunks.push_back(ScheduledChunk{sequence.id, first, num_tokens, samples});
  (samples && num_tokens == 1 ? out.num_decode_tokens : out.num_prefill_tokens) += num_tokens;
  sequence.num_computed += num_tokens;
}

void Scheduler::preempt(Sequence& sequence, SchedulerOutput& out) {
  // Dropped before this step's forward, so a save into the same id in this step is kept.
  give_back_rolling_snapshot(sequence, out.dropped_snapshots);
  blocks_.free(sequence.block_table);
  blocks_.free_slot(sequence.slot);
  out.released_slots.push_back(sequence.slot);
  out.preempted.push_back(sequence.id);
  sequence.slot = -1;
  sequence.num_computed = 0;
  ++num_preemptions_;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  confirm_prefix_saves();  // a caller that runs no engine saves nothing and confirms nothing
  out.dropped_snapshots.swap(snapshots_to_drop_);
  int64_t budget = config_.max_num_batched_tokens;
  bool preempted_any = false;

  // Running sequences first, oldest first; each needs KV blocks for the tokens it adds.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& sequence = running_[i];
    const int64_t missing = static_cast<int64_t>(sequence.tokens.size()) - sequence.num_computed;
    const int64_t count = std::min(missing, budget);
    if (count <= 0) fail("scheduler: sequence {} is waiting for a sampled token", sequence.id);
    bool self_preempted = false;
    while (!grow_evicting(sequence.block_table, sequence.num_computed + count, out)) {
      // Free the newest running sequence; if that is this one, it waits for the others to finish.
      Sequence victim = std::move(running_.back());
      running_.pop_back();
      preempt(victim, out);
      waiting_.push_front(std::move(victim));
      preempted_any = true;
      if (running_.size() == i) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    emit(sequence, count, out);
    save_prefix_if_due(sequence, out);
    budget -= count;
    ++i;
  }

  // Then admissions, first come first served; none in a step that had to preempt.
  while (!preempted_any && budget > 0 && !waiting_.empty() &&
         static_cast<int>(running_.size()) < config_.max_num_seqs && blocks_.slots_used() < blocks_.slots_total()) {
    const int64_t before = static_cast<int64_t>(out.batch.tokens.size());
    if (!admit_front(budget, out)) break;
    budget -= static_cast<int64_t>(out.batch.tokens.size()) - before;
  }
  return out;
}

bool Scheduler::grow_evicting(std::vector<int>& table, int64_t tokens, SchedulerOutput& out) {
  while (!blocks_.grow(table, tokens)) {
    if (!evict_prefix(out)) return false;
  }
  return true;
}

bool Scheduler::admit_front(int64_t budget, SchedulerOutput& out) {
  Sequence& sequence = waiting_.front();
  const int64_t length = static_cast<int64_t>(sequence.tokens.size());
  std::optional<int> restored_snapshot;
  // A scored prompt needs every prompt row's logits, so it computes them all.
  if (caches_prefixes() && !sequence.score_prompt) {
    out.prefix_queried_tokens += length;
    // At least the last token is computed: its logits give the next token.
    if (const PrefixEntry* entry = prefix_cache_.longest_prefix(sequence.tokens, length - 1)) {
      sequence.block_table = entry->blocks;
      blocks_.retain(sequence.block_table);
      sequence.num_computed = static_cast<int64_t>(entry->tokens.size());
      restored_snapshot = entry->snapshot;
    }
  }
  const int64_t count = std::min(length - sequence.num_computed, budget);
  if (!grow_evicting(sequence.block_table, sequence.num_computed + count, out)) {
    blocks_.free(sequence.block_table);
    sequence.num_computed = 0;
    return false;
  }
  if (restored_snapshot) out.prefix_hit_tokens += sequence.num_computed;
  sequence.slot = *blocks_.take_slot();
  if (restored_snapshot) out.prefix_restores.push_back({*restored_snapshot, sequence.slot});
  running_.push_back(std::move(sequence));
  waiting_.pop_front();
  emit(running_.back(), count, out);
  save_prefix_if_due(running_.back(), out);
  return true;
}

void Scheduler::confirm_prefix_saves() {
  for (PrefixEntry& entry : saving_prefixes_) {
    if (std::optional<PrefixEntry> duplicate = prefix_cache_.insert(std::move(entry))) {
      free_prefix(*duplicate, snapshots_to_drop_);
    }
  }
  saving_prefixes_.clear();
  for (uint64_t id : saving_rolling_) {
    if (Sequence* sequence = find(id)) sequence->rolling_saved = true;
  }
  saving_rolling_.clear();
}

void Scheduler::abandon_prefix_saves() {
  for (PrefixEntry& entry : saving_prefixes_) free_prefix(entry, snapshots_to_drop_);
  saving_prefixes_.clear();
  for (uint64_t id : saving_rolling_) {
    if (Sequence* sequence = find(id)) give_back_rolling_snapshot(*sequence, snapshots_to_drop_);
  }
  saving_rolling_.clear();
}

void Scheduler::save_rolling_snapshot(Sequence& sequence, SchedulerOutput& out) {
  if (sequence.rolling_snapshot < 0) {
    // Only a free id: evicting cached prefixes for it would trade a likely hit for a possible one.
    const std::optional<int> snapshot = prefix_cache_.take_snapshot();
    if (!snapshot) return;
    sequence.rolling_snapshot = *snapshot;
  }
  sequence.rolling_length = sequence.num_computed;
  sequence.rolling_saved = false;
  save_in_last_chunk(sequence.num_computed, sequence.rolling_snapshot, out);
  saving_rolling_.push_back(sequence.id);
}

void Scheduler::save_in_last_chunk(int64_t length, int snapshot, SchedulerOutput& out) {
  SequenceChunk& chunk = out.batch.chunks.back();
  chunk.prefix_save_snapshot = snapshot;
  chunk.prefix_save_after = length - chunk.start;
}

void Scheduler::publish_rolling_snapshot(Sequence& sequence) {
  if (sequence.rolling_snapshot < 0) return;
  if (!sequence.rolling_saved) {
    give_back_rolling_snapshot(sequence, snapshots_to_drop_);
    return;
  }
  const int64_t length = sequence.rolling_length;
  PrefixEntry entry{std::vector<int32_t>(sequence.tokens.begin(), sequence.tokens.begin() + length),
                    std::vector<int>(sequence.block_table.begin(), sequence.block_table.begin() + length / kKvBlockSize),
                    sequence.rolling_snapshot};
  blocks_.retain(entry.blocks);
  if (std::optional<PrefixEntry> duplicate = prefix_cache_.insert(std::move(entry))) {
    free_prefix(*duplicate, snapshots_to_drop_);
  }
  sequence.rolling_snapshot = -1;
}

void Scheduler::give_back_rolling_snapshot(Sequence& sequence, std::vector<int>& drops) {
  if (sequence.rolling_snapshot < 0) return;
  give_back_snapshot(sequence.rolling_snapshot, drops);
  sequence.rolling_snapshot = -1;
}

int64_t Scheduler::prefix_save_point(const Sequence& sequence) const {
  if (!caches_prefixes()) return 0;
  return (static_cast<int64_t>(sequence.tokens.size()) - 1) / kKvBlockSize * kKvBlockSize;
}

bool Scheduler::prefix_cached_or_saving(const Sequence& sequence, int64_t length) const {
  if (prefix_cache_.contains(sequence.tokens, length)) return true;
  return std::any_of(saving_prefixes_.begin(), saving_prefixes_.end(), [&](const PrefixEntry& saving) {
    return static_cast<int64_t>(saving.tokens.size()) == length &&
           std::equal(saving.tokens.begin(), saving.tokens.end(), sequence.tokens.begin());
  });
}

void Scheduler::save_prefix_if_due(Sequence& sequence, SchedulerOutput& out) {
  const int64_t point = prefix_save_point(sequence);
  if (point == 0) return;
  const int64_t run_start = out.batch.chunks.back().start;
  const bool reaches_point = run_start < point && point <= sequence.num_computed;
  if (!reaches_point || prefix_cached_or_saving(sequence, point)) {
    if (sequence.num_computed > point && sequence.num_computed % kKvBlockSize == 0) save_rolling_snapshot(sequence, out);
    return;
  }
  std::optional<int> snapshot = prefix_cache_.take_snapshot();
  while (!snapshot && evict_prefix(out)) snapshot = prefix_cache_.take_snapshot();
  if (!snapshot) return;  // every snapshot id is being saved this step
  PrefixEntry entry{std::vector<int32_t>(sequence.tokens.begin(), sequence.tokens.begin() + point),
                    std::vector<int>(sequence.block_table.begin(), sequence.block_table.begin() + point / kKvBlockSize),
                    *snapshot};
  blocks_.retain(entry.blocks);
  save_in_last_chunk(point, *snapshot, out);
  saving_prefixes_.push_back(std::move(entry));
}

bool Scheduler::evict_prefix(SchedulerOutput& out) {
  std::optional<PrefixEntry> entry = prefix_cache_.evict_least_recent();
  if (!entry) return false;
  free_prefix(*entry, out.dropped_snapshots);
  return true;
}

void Scheduler::free_prefix(PrefixEntry& entry, std::vector<int>& drops) {
  blocks_.free(entry.blocks);
  give_back_snapshot(entry.snapshot, drops);
}

void Scheduler::give_back_snapshot(int snapshot, std::vector<int>& drops) {
  prefix_cache_.give_back_snapshot(snapshot);
  drops.push_back(snapshot);
}

void Scheduler::append_token(uint64_t id, int32_t token) {
  Sequence* sequence = find(id);
  if (sequence == nullptr || sequence->slot < 0) fail("scheduler: append_token to sequence {} which is not running", id);
  if (sequence->num_computed != static_cast<int64_t>(sequence->tokens.size())) {
    fail("scheduler: append_token to sequence {} before its chunk reached the end", id);
  }
  if (static_cast<int64_t>(sequence->tokens.size()) >= config_.max_model_len) {
    fail("scheduler: sequence {} is already max_model_len {} tokens long", id, config_.max_model_len);
  }
  sequence->tokens.push_back(token);
}

std::optional<int> Scheduler::remove(uint64_t id) {
  auto waiting = std::find_if(waiting_.begin(), waiting_.end(), [&](const Sequence& s) { return s.id == id; });
  if (waiting != waiting_.end()) {
    waiting_.erase(waiting);
    return std::nullopt;
  }
  auto running = std::find_if(running_.begin(), running_.end(), [&](const Sequence& s) { return s.id == id; });
  if (running == running_.end()) fail("scheduler: remove of unknown sequence {}", id);
  const int slot = running->slot;
  publish_rolling_snapshot(*running);
  blocks_.free(running->block_table);
  blocks_.free_slot(slot);
  running_.erase(running);
  return slot;
}

Scheduler::Sequence* Scheduler::find(uint64_t id) {
  return const_cast<Sequence*>(static_cast<const Scheduler*>(this)->find(id));
}

const Scheduler::Sequence* Scheduler::find(uint64_t id) const {
  for (const Sequence& s : running_) {
    if (s.id == id) return &s;
  }
  for (const Sequence& s : waiting_) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

bool Scheduler::contains(uint64_t id) const { return find(id) != nullptr; }

int64_t Scheduler::length(uint64_t id) const {
  const Sequence* sequence = find(id);
  if (sequence == nullptr) fail("scheduler: length of unknown sequence {}", id);
  return static_cast<int64_t>(sequence->tokens.size());
}

}  // namespace uberlm
