#include "runtime/prefix_cache.h"

#include <algorithm>

#include "core/error.h"
#include "runtime/backend.h"

namespace uberlm {

namespace {

constexpr uint64_t kFnvOffset = 1469598103934665603ull, kFnvPrime = 1099511628211ull;

uint64_t hash_step(uint64_t hash, int32_t token) {
  return (hash ^ static_cast<uint32_t>(token)) * kFnvPrime;
}

}  // namespace

PrefixCache::PrefixCache(int num_snapshots) : snapshots_(num_snapshots) {
  if (num_snapshots < 0) fail("prefix cache: {} snapshots; need >= 0", num_snapshots);
}

uint64_t PrefixCache::hash_of(const std::vector<int32_t>& tokens, int64_t length) {
  uint64_t hash = kFnvOffset;
  for (int64_t i = 0; i < length; ++i) hash = hash_step(hash, tokens[i]);
  return hash;
}

std::list<PrefixEntry>::const_iterator PrefixCache::find(const std::vector<int32_t>& tokens, int64_t length,
                                                         uint64_t hash) const {
  const auto [first, last] = by_hash_.equal_range(hash);
  for (auto it = first; it != last; ++it) {
    const std::vector<int32_t>& cached = it->second->tokens;
    if (static_cast<int64_t>(cached.size()) == length && std::equal(cached.begin(), cached.end(), tokens.begin())) {
      return it->second;
    }
  }
  return entries_.end();
}

const PrefixEntry* PrefixCache::longest_prefix(const std::vector<int32_t>& tokens, int64_t limit) {
  if (!enabled()) return nullptr;
  limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens.size()));
  // The hash at every block boundary in one pass, then the longest first.
  std::vector<uint64_t> boundary_hashes;
  uint64_t hash = kFnvOffset;
  for (int64_t i = 0; i < limit; ++i) {
    hash = hash_step(hash, tokens[i]);
    if ((i + 1) % kKvBlockSize == 0) boundary_hashes.push_back(hash);
  }
  for (int64_t b = static_cast<int64_t>(boundary_hashes.size()); b >= 1; --b) {
    const auto entry = find(tokens, b * kKvBlockSize, boundary_hashes[b - 1]);
    if (entry == entries_.end()) continue;
    entries_.splice(entries_.begin(), entries_, entry);
    return &*entry;
  }
  return nullptr;
}

bool PrefixCache::contains(const std::vector<int32_t>& tokens, int64_t length) const {
  return find(tokens, length, hash_of(tokens, length)) != entries_.end();
}

std::optional<PrefixEntry> PrefixCache::insert(PrefixEntry entry) {
  const int64_t length = static_cast<int64_t>(entry.tokens.size());
  if (length == 0 || length % kKvBlockSize != 0) {
    fail("prefix cache: an entry of {} tokens; need a positive multiple of {}", length, kKvBlockSize);
  }
  const uint64_t hash = hash_of(entry.tokens, length);
  if (find(entry.tokens, length, hash) != entries_.end()) return entry;
  entries_.push_front(std::move(entry));
  by_hash_.emplace(hash, entries_.begin());
  return std::nullopt;
}

std::optional<PrefixEntry> PrefixCache::evict_least_recent() {
  if (entries_.empty()) return std::nullopt;
  const auto last = std::prev(entries_.end());
  const auto [first, end] = by_hash_.equal_range(hash_of(last->tokens, static_cast<int64_t>(last->tokens.size())));
  for (auto it = first; it != end; ++it) {
    if (it->second == last) {
      by_hash_.erase(it);
      break;
    }
  }
  PrefixEntry entry = std::move(*last);
  entries_.erase(last);
  return entry;
}

}  // namespace uberlm
