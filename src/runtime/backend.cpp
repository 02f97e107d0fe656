#include "runtime/backend.h"

#include "core/error.h"

namespace uberlm {

ForwardResult Backend::forward_observed(const ForwardBatch&, ForwardSnapshot&) {
  fail("backend {} cannot record layer snapshots", name());
}

void Backend::save_prefix(int, int) { fail("backend {} keeps no prefix snapshots", name()); }
void Backend::restore_prefix(int, int) { fail("backend {} keeps no prefix snapshots", name()); }
void Backend::drop_prefix(int) { fail("backend {} keeps no prefix snapshots", name()); }

}  // namespace uberlm
