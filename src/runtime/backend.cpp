#include "runtime/backend.h"

#include "core/error.h"

namespace uberlm {

ForwardResult Backend::forward_observed(const ForwardBatch&, ForwardSnapshot&) {
  fail("backend {} cannot record layer snapshots", name());
}

}  // namespace uberlm
