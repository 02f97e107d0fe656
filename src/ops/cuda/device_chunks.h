#pragma once
// A step's sequence chunks as the kernels that work per chunk read them (StepMetadata's per-chunk arrays).
#include <cstdint>

namespace uberlm::cuda {

// Chunk c holds tokens [first[c], first[c] + length[c]) of the step, of cache slot slot[c], continuing its
// sequence at position start[c]; start[c] == 0 means a new sequence.
struct DeviceChunks {
  const int32_t* first;
  const int32_t* length;
  const int32_t* slot;
  const int32_t* start;
  int count;
};

}  // namespace uberlm::cuda
