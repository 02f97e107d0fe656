// Fuzzes parse_gguf on whole file images. An uberlm::Error is the expected answer to a bad file; any
// other exception, a sanitizer report, or an accepted file that breaks the promised invariants is a
// finding.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"

namespace {

// What parse_gguf promises about any file it accepts.
void check_invariants(const uberlm::GgufHeader& header, uint64_t size) {
  if (header.alignment == 0 || (header.alignment & (header.alignment - 1)) != 0) std::abort();
  if (header.data_offset > size || header.tensor_order.size() != header.tensors.size()) std::abort();
  const uint64_t data_size = size - header.data_offset;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, info] : header.tensors) {
    const auto traits = uberlm::ggml_type_traits(info.type);
    if (!traits || info.ne.empty() || info.ne.size() > 4) std::abort();
    if (info.ne[0] % static_cast<uint64_t>(traits->block_size) != 0) std::abort();
    uint64_t elements = 1;
    for (uint64_t extent : info.ne) elements *= extent;  // cannot wrap: the parser refused anything past 2^63
    if (elements != info.elements) std::abort();
    if (info.bytes != elements / static_cast<uint64_t>(traits->block_size) * static_cast<uint64_t>(traits->block_bytes)) {
      std::abort();
    }
    if (info.offset % header.alignment != 0 || info.offset > data_size || info.bytes > data_size - info.offset) {
      std::abort();
    }
    ranges.emplace_back(info.offset, info.offset + info.bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    check_invariants(uberlm::parse_gguf(data, size, "fuzz.gguf"), size);
  } catch (const uberlm::Error&) {
  }
  return 0;
}
