// Fuzzes parse_safetensors_header. Input: 8 bytes of data-section size (u64 little-endian), then
// the header text. An uberlm::Error is the expected answer to a bad header; any other exception, a
// sanitizer report, or an accepted header that breaks the promised invariants is a finding.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

namespace {

// What parse_safetensors_header promises about any header it accepts.
void check_invariants(const uberlm::SafetensorsHeader& header, uint64_t data_size) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.tensors) {
    uint64_t bytes = uberlm::dtype_size(entry.dtype);
    for (int64_t dim : entry.shape) {
      if (dim < 0) std::abort();
      bytes *= static_cast<uint64_t>(dim);  // cannot wrap: the parser refused anything past 2^63
    }
    if (entry.begin > entry.end || entry.end > data_size || entry.end - entry.begin != bytes) std::abort();
    ranges.emplace_back(entry.begin, entry.end);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_size = 0;
  for (int i = 7; i >= 0; --i) data_size = (data_size << 8) | data[i];
  std::string_view header(reinterpret_cast<const char*>(data + 8), size - 8);
  try {
    check_invariants(uberlm::parse_safetensors_header(header, data_size, "fuzz.safetensors"), data_size);
  } catch (const uberlm::Error&) {
  }
  return 0;
}
