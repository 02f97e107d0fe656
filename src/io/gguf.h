#pragma once
// GGUF reader (llama.cpp's model format, versions 2 and 3): one file, memory-mapped, with the header
// validated before any tensor is used. Layout, all little-endian:
//   "GGUF" | u32 version | u64 tensor_count | u64 metadata_count
//   metadata_count x (string key | u32 value type | value)
//   tensor_count x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
//   padding to `general.alignment` (default 32) | data section
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements. ne[0] is the
// innermost (contiguous) dimension; tensor offsets are relative to the data section and aligned.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "core/ggml_quants.h"

namespace uberlm {

// Value types, numbered as the file stores them (= the index of the alternative in GgufValue::data).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType type);

struct GgufValue;
struct GgufArray {
  GgufType element_type = GgufType::U8;
  std::vector<GgufValue> values;
};
struct GgufValue {
  std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string, GgufArray,
               uint64_t, int64_t, double>
      data;
  GgufType type() const { return static_cast<GgufType>(data.index()); }
};

struct GgufTensorInfo {
  std::vector<uint64_t> ne;  // GGUF order: ne[0] innermost
  uint32_t type = 0;         // a GgmlType with known traits (checked)
  uint64_t offset = 0;       // into the data section, aligned
  uint64_t bytes = 0;
  uint64_t elements = 0;
  GgmlType ggml_type() const { return static_cast<GgmlType>(type); }
};

struct GgufHeader {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // file offset of the data section
  std::map<std::string, GgufValue> metadata;
  std::map<std::string, GgufTensorInfo> tensors;
  std::vector<std::string> tensor_order;  // names in file order
};

// Parses and validates a whole GGUF file image (header and tensor bounds; the data is not read).
// Every length, count and offset is checked against `size` without overflow; duplicate keys and
// names, an alignment that is not a power of two, an unknown tensor type, a tensor whose row is not
// whole blocks, and tensors out of bounds or overlapping are errors naming `file` and the key or tensor.
GgufHeader parse_gguf(const uint8_t* bytes, uint64_t size, const std::string& file);

class GgufFile {
 public:
  // Maps the file and validates it; throws Error naming the file (and key or tensor) at fault.
  static std::unique_ptr<GgufFile> open(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const GgufHeader& header() const { return header_; }

  // Metadata lookups; each throws Error naming the file and key when the key is absent or of
  // another type. integer() takes any integer type and checks the value fits [min, max].
  bool has(const std::string& key) const { return header_.metadata.count(key) != 0; }
  const GgufValue& value(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t min, int64_t max) const;
  double number(const std::string& key) const;  // F32 or F64
  bool boolean(const std::string& key) const;
  const std::string& string(const std::string& key) const;
  const GgufArray& array(const std::string& key, GgufType element_type) const;

  bool has_tensor(const std::string& name) const { return header_.tensors.count(name) != 0; }
  const GgufTensorInfo& tensor(const std::string& name) const;  // throws when absent
  const uint8_t* tensor_data(const std::string& name) const;     // into the mapping

 private:
  GgufFile() = default;
  std::filesystem::path path_;
  GgufHeader header_;
  const uint8_t* mapping_ = nullptr;
  size_t mapping_size_ = 0;
};

}  // namespace uberlm
