#pragma once
// Prefix caching for the hybrid model. A cached prefix is the first `length` tokens of an earlier
// sequence, `length` a multiple of kKvBlockSize: the KV blocks of those tokens, which the entry holds a
// reference to in the scheduler's pool, and a backend snapshot of the sequence's caches after them
// (SequenceChunk::prefix_save_snapshot: the Gated DeltaNet conv and recurrent states, which no block of tokens can
// rebuild, and on a backend without a paged pool its keys and values too). A sequence whose tokens
// begin with a cached prefix starts its slot from the snapshot and shares the blocks, so its prefill
// skips those tokens in every layer.
//
// Entries are found by a hash of their tokens and then compared token by token, so a hash collision
// costs a miss, never a wrong prefix. The least recently used entry is evicted first when KV blocks or
// snapshot ids run short. This class is the index alone: the scheduler owns the blocks and tells the
// backend what to save, restore and drop.
#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

#include "runtime/id_pool.h"

namespace uberlm {

struct PrefixEntry {
  std::vector<int32_t> tokens;  // the prefix; its length is a multiple of kKvBlockSize
  std::vector<int> blocks;      // KV blocks of those tokens, one reference held by the entry
  int snapshot = -1;            // the backend's snapshot id of the caches after them
};

class PrefixCache {
 public:
  // num_snapshots: snapshot ids 0..num_snapshots-1 the backend can hold; 0 turns caching off.
  explicit PrefixCache(int num_snapshots);

  bool enabled() const { return snapshots_.total() > 0; }
  // The longest entry whose tokens are a prefix of tokens[0, limit); marks it the most recently used.
  const PrefixEntry* longest_prefix(const std::vector<int32_t>& tokens, int64_t limit);
  bool contains(const std::vector<int32_t>& tokens, int64_t length) const;
  // A snapshot id nobody holds, or nullopt when every one is taken (evict, then ask again).
  std::optional<int> take_snapshot() { return snapshots_.take(); }
  void give_back_snapshot(int snapshot) { snapshots_.give_back(snapshot); }
  // Adds an entry made with take_snapshot() as the most recently used. An entry of the same tokens is
  // already there: returns the new one unchanged for the caller to free, else nullopt.
  std::optional<PrefixEntry> insert(PrefixEntry entry);
  // Removes the least recently used entry and returns it (its blocks and snapshot for the caller to
  // free); nullopt when the cache is empty.
  std::optional<PrefixEntry> evict_least_recent();
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }

 private:
  // Hash of tokens[0, length).
  static uint64_t hash_of(const std::vector<int32_t>& tokens, int64_t length);
  std::list<PrefixEntry>::const_iterator find(const std::vector<int32_t>& tokens, int64_t length, uint64_t hash) const;

  IdPool snapshots_;
  std::list<PrefixEntry> entries_;  // most recently used first
  std::unordered_multimap<uint64_t, std::list<PrefixEntry>::iterator> by_hash_;
};

}  // namespace uberlm
