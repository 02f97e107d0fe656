#pragma once
// safetensors reader: one file, memory-mapped, with the header validated before any tensor is used.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data section. Offsets are relative to the data section.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "core/tensor.h"

namespace uberlm {

struct SafetensorsEntry {
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" string map
};

// Validates the JSON header against a data section of `data_size` bytes: valid JSON, known dtypes,
// non-negative shapes, offsets in bounds and non-overlapping, byte size = dtype size x shape.
// Errors name `file` and the tensor at fault.
SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size, const std::string& file);

class SafetensorsFile {
 public:
  // Maps the file and validates it; throws Error naming the file (and tensor) at fault.
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  bool has(const std::string& name) const { return header_.tensors.count(name) != 0; }
  // A view into the mapping; valid while this object lives. Throws if `name` is absent.
  TensorView view(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  SafetensorsHeader header_;
  const uint8_t* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section inside the mapping
};

// Writes tensors to `path` atomically (temporary file, then rename). Used by quantize and tests.
struct SafetensorsWriteEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};
void write_safetensors(const std::filesystem::path& path, const std::vector<SafetensorsWriteEntry>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace uberlm
