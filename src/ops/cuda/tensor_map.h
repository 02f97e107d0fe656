#pragma once
// Tiled bulk-copy (TMA) descriptors of byte matrices. The driver's cuTensorMapEncodeTiled is looked up
// through the runtime once, so nothing links libcuda.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

// A descriptor of the row-major byte matrix [rows, row_bytes] at `base` (16-byte aligned, row_bytes a
// multiple of 16) that copies boxes of [box_rows, box_bytes]; parts of a box outside the matrix arrive as
// zeros. With `swizzle_128b` (box_bytes <= 128) the 16-byte chunks of box row r land at chunk index
// c ^ (r % 8) of their 128-byte line in shared memory, which must then be 1024-byte aligned.
cudaError_t encode_byte_tile_map(CUtensorMap& map, const void* base, uint64_t row_bytes, uint64_t rows,
                                 uint32_t box_bytes, uint32_t box_rows, bool swizzle_128b);

}  // namespace uberlm::cuda
