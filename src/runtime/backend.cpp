#include "runtime/backend.h"

#include "core/error.h"

namespace uberlm {

ForwardResult Backend::forward_observed(const ForwardBatch&, ForwardSnapshot&) {
  fail("backend {} cannot record layer snapshots", name());
}

void Backend::restore_prefix(int, int) { fail("backend {} keeps no prefix snapshots", name()); }
void Backend::drop_prefix(int) { fail("backend {} keeps no prefix snapshots", name()); }

void check_prefix_save(const SequenceChunk& chunk, int max_prefix_snapshots, const std::string& backend) {
  if (chunk.prefix_save_snapshot < 0) return;
  if (chunk.prefix_save_snapshot >= max_prefix_snapshots) {
    fail("{}: slot {} asks to save prefix snapshot {}, the backend keeps {}", backend, chunk.slot,
         chunk.prefix_save_snapshot, max_prefix_snapshots);
  }
  if (chunk.prefix_save_after < 1 || chunk.prefix_save_after > chunk.num_tokens) {
    fail("{}: slot {} asks for a prefix save after {} of its run's {} tokens", backend, chunk.slot,
         chunk.prefix_save_after, chunk.num_tokens);
  }
}

}  // namespace uberlm
