#pragma once
// The host caches of the CPU backends: one CpuSequenceCache per slot, and the prefix snapshots (filled by
// the decoder's forward where a run asks for a prefix save), each a copy of a slot's whole cache: keys and
// values included, since host caches have no paged pool to share them from.
#include <vector>

#include "model/decoder_cpu.h"

namespace uberlm {

class CpuCacheSlots {
 public:
  CpuCacheSlots(const CpuDecoder& decoder, int slots, int prefix_snapshots)
      : decoder_(&decoder), caches_(slots, decoder.new_cache()), snapshots_(prefix_snapshots) {}

  std::vector<CpuSequenceCache>& caches() { return caches_; }
  int slots() const { return static_cast<int>(caches_.size()); }
  int prefix_snapshots() const { return static_cast<int>(snapshots_.size()); }
  void release(int slot) { caches_.at(slot) = decoder_->new_cache(); }
  std::vector<CpuSequenceCache>& prefixes() { return snapshots_; }
  void restore(int snapshot, int slot) { caches_.at(slot) = snapshots_.at(snapshot); }
  void drop(int snapshot) { snapshots_.at(snapshot) = CpuSequenceCache{}; }

 private:
  const CpuDecoder* decoder_;
  std::vector<CpuSequenceCache> caches_;
  std::vector<CpuSequenceCache> snapshots_;
};

}  // namespace uberlm
