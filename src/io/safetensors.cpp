#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace uberlm {

using nlohmann::json;

namespace {

constexpr const char* kMetadataKey = "__metadata__";

// Reads one header entry {"dtype", "shape", "data_offsets"}; every error names the file and tensor.
class EntryReader {
 public:
  EntryReader(std::string file, std::string tensor) : file_(std::move(file)), tensor_(std::move(tensor)) {}

  SafetensorsEntry read(const json& value, uint64_t data_size) const {
    if (!value.is_object()) bad("entry must be a JSON object, got {}", value.type_name());
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets") {
        bad("unexpected field '{}'", it.key());
      }
    }
    SafetensorsEntry entry;
    entry.dtype = read_dtype(field(value, "dtype"));
    entry.shape = read_shape(field(value, "shape"));
    read_offsets(field(value, "data_offsets"), data_size, entry);
    uint64_t expected = byte_size(entry);
    if (entry.end - entry.begin != expected) {
      bad("data_offsets [{}, {}] hold {} bytes but {} {} needs {}", entry.begin, entry.end, entry.end - entry.begin,
          dtype_name(entry.dtype), shape_string(entry.shape), expected);
    }
    return entry;
  }

 private:
  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail("safetensors {}: tensor '{}': {}", file_, tensor_, fmt::format(format, std::forward<Args>(args)...));
  }

  const json& field(const json& object, const char* key) const {
    auto it = object.find(key);
    if (it == object.end()) bad("missing field '{}'", key);
    return *it;
  }

  DType read_dtype(const json& value) const {
    if (!value.is_string()) bad("'dtype' must be a string, got {}", value.type_name());
    const std::string& name = value.get_ref<const std::string&>();
    DType dtype;
    if (!parse_dtype(name, &dtype)) {
      bad("unsupported dtype '{}' (supported: F32, F16, BF16, F8_E4M3, U8, I8, I32, I64)", name);
    }
    return dtype;
  }

  // Non-negative integers whose product, in bytes, fits in 63 bits.
  std::vector<int64_t> read_shape(const json& value) const {
    if (!value.is_array()) bad("'shape' must be a list of integers, got {}", value.type_name());
    std::vector<int64_t> shape;
    for (const json& dim : value) {
      if (!dim.is_number_unsigned() || dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        bad("'shape' entries must be non-negative integers, got {}", describe(dim));
      }
      shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
    }
    return shape;
  }

  void read_offsets(const json& value, uint64_t data_size, SafetensorsEntry& entry) const {
    if (!value.is_array() || value.size() != 2 || !value[0].is_number_unsigned() || !value[1].is_number_unsigned()) {
      bad("'data_offsets' must be two non-negative integers [begin, end], got {}", describe(value));
    }
    entry.begin = value[0].get<uint64_t>();
    entry.end = value[1].get<uint64_t>();
    if (entry.begin > entry.end) bad("data_offsets [{}, {}] end before they begin", entry.begin, entry.end);
    if (entry.end > data_size) {
      bad("data_offsets [{}, {}] lie past the end of the {}-byte data section", entry.begin, entry.end, data_size);
    }
  }

  // Element count times element size, refusing anything past 2^63 (no tensor that large fits a file).
  uint64_t byte_size(const SafetensorsEntry& entry) const {
    uint64_t bytes = dtype_size(entry.dtype);
    for (int64_t dim : entry.shape) {
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes) || bytes > static_cast<uint64_t>(INT64_MAX)) {
        bad("shape {} of {} overflows 2^63 bytes", shape_string(entry.shape), dtype_name(entry.dtype));
      }
    }
    return bytes;
  }

  // Short text of a scalar or a type name of anything nested: dumping arbitrary JSON could be huge.
  static std::string describe(const json& value) {
    if (value.is_primitive()) return value.dump();
    return value.type_name();
  }

  std::string file_;
  std::string tensor_;
};

std::map<std::string, std::string> read_metadata(const json& value, const std::string& file) {
  if (!value.is_object()) fail("safetensors {}: '{}' must be an object of strings", file, kMetadataKey);
  std::map<std::string, std::string> metadata;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it->is_string()) {
      fail("safetensors {}: '{}' entry '{}' must be a string, got {}", file, kMetadataKey, it.key(), it->type_name());
    }
    metadata[it.key()] = it->get<std::string>();
  }
  return metadata;
}

// nlohmann keeps the last of two equal keys; a header that names a tensor twice is corrupt, so
// the parse callback rejects duplicate keys at the top level.
json parse_header_json(std::string_view text, const std::string& file) {
  std::set<std::string> top_level_keys;
  auto reject_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && !top_level_keys.insert(parsed.get<std::string>()).second) {
      fail("safetensors {}: tensor '{}' appears twice in the header", file, parsed.get<std::string>());
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), reject_duplicates);
  } catch (const json::exception& error) {
    fail("safetensors {}: header is not valid JSON: {}", file, error.what());
  }
}

}  // namespace

SafetensorsHeader parse_safetensors_header(std::string_view text, uint64_t data_size, const std::string& file) {
  json root = parse_header_json(text, file);
  if (!root.is_object()) fail("safetensors {}: header must be a JSON object, got {}", file, root.type_name());

  SafetensorsHeader header;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kMetadataKey) {
      header.metadata = read_metadata(*it, file);
    } else {
      header.tensors.emplace(it.key(), EntryReader(file, it.key()).read(*it, data_size));
    }
  }

  // Sorted by begin, each tensor must start at or after the end of the one before it.
  std::vector<const std::pair<const std::string, SafetensorsEntry>*> by_offset;
  for (const auto& item : header.tensors) by_offset.push_back(&item);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return std::tie(a->second.begin, a->second.end) < std::tie(b->second.begin, b->second.end);
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& [previous_name, previous] = *by_offset[i - 1];
    const auto& [name, entry] = *by_offset[i];
    if (entry.begin < previous.end) {
      fail("safetensors {}: tensor '{}' [{}, {}] overlaps tensor '{}' [{}, {}]", file, name, entry.begin, entry.end,
           previous_name, previous.begin, previous.end);
    }
  }
  return header;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string file = path.string();
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the S_ISREG check below refuses it.
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("safetensors {}: cannot open: {}", file, std::strerror(errno));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    int saved = errno;
    ::close(fd);
    fail("safetensors {}: cannot stat: {}", file, std::strerror(saved));
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    fail("safetensors {}: not a regular file", file);
  }
  const uint64_t file_size = static_cast<uint64_t>(info.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail("safetensors {}: file is {} bytes, too short for the 8-byte header length", file, file_size);
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int saved = errno;
  ::close(fd);
  if (mapping == MAP_FAILED) fail("safetensors {}: mmap failed: {}", file, std::strerror(saved));

  // Owns the mapping from here, so a validation error below unmaps it.
  std::unique_ptr<SafetensorsFile> result(new SafetensorsFile());
  result->path_ = path;
  result->mapping_ = static_cast<const uint8_t*>(mapping);
  result->mapping_size_ = file_size;

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | result->mapping_[i];  // u64 little-endian
  if (header_size > file_size - 8) {
    fail("safetensors {}: header length {} runs past the end of the {}-byte file", file, header_size, file_size);
  }
  std::string_view header_text(reinterpret_cast<const char*>(result->mapping_ + 8), header_size);
  result->header_ = parse_safetensors_header(header_text, file_size - 8 - header_size, file);
  result->data_ = result->mapping_ + 8 + header_size;
  return result;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(const_cast<uint8_t*>(mapping_), mapping_size_);
}

TensorView SafetensorsFile::view(const std::string& name) const {
  auto it = header_.tensors.find(name);
  if (it == header_.tensors.end()) fail("safetensors {}: no tensor '{}'", path_.string(), name);
  const SafetensorsEntry& entry = it->second;
  return TensorView{entry.dtype, entry.shape, data_ + entry.begin};
}

void write_safetensors(const std::filesystem::path& path, const std::vector<SafetensorsWriteEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  // Data laid out by element size, largest first, so every tensor starts aligned to its element
  // size (the data section starts 8-byte aligned); then by name, for a deterministic file.
  std::vector<const SafetensorsWriteEntry*> order;
  for (const auto& tensor : tensors) order.push_back(&tensor);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    size_t size_a = dtype_size(a->dtype), size_b = dtype_size(b->dtype);
    return size_a != size_b ? size_a > size_b : a->name < b->name;
  });

  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::vector<uint64_t> byte_sizes;
  uint64_t offset = 0;
  for (const auto* tensor : order) {
    if (tensor->name == kMetadataKey || header.contains(tensor->name)) {
      fail("safetensors {}: cannot write tensor '{}': the name is taken", file, tensor->name);
    }
    uint64_t bytes = dtype_size(tensor->dtype);
    for (int64_t dim : tensor->shape) {
      if (dim < 0) fail("safetensors {}: tensor '{}' has a negative dimension in {}", file, tensor->name,
                        shape_string(tensor->shape));
      bytes *= static_cast<uint64_t>(dim);
    }
    header[tensor->name] = {{"dtype", dtype_name(tensor->dtype)},
                            {"shape", tensor->shape},
                            {"data_offsets", {offset, offset + bytes}}};
    byte_sizes.push_back(bytes);
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // spaces are JSON whitespace

  // A temporary file in the same folder, renamed over the target at the end: readers never see a
  // half-written file, and the rename stays on one file system.
  std::filesystem::path temporary = path;
  temporary += fmt::format(".tmp.{}", ::getpid());
  FILE* out = std::fopen(temporary.c_str(), "wb");
  if (out == nullptr) fail("safetensors {}: cannot create {}: {}", file, temporary.string(), std::strerror(errno));
  uint8_t length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<uint8_t>(header_text.size() >> (8 * i));
  bool ok = std::fwrite(length_bytes, 1, 8, out) == 8 &&
            std::fwrite(header_text.data(), 1, header_text.size(), out) == header_text.size();
  for (size_t i = 0; ok && i < order.size(); ++i) {
    ok = byte_sizes[i] == 0 || std::fwrite(order[i]->data, 1, byte_sizes[i], out) == byte_sizes[i];
  }
  ok = std::fflush(out) == 0 && ::fsync(::fileno(out)) == 0 && ok;
  int saved = errno;
  ok = std::fclose(out) == 0 && ok;
  if (!ok) {
    std::remove(temporary.c_str());
    fail("safetensors {}: write failed: {}", file, std::strerror(saved));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    saved = errno;
    std::remove(temporary.c_str());
    fail("safetensors {}: cannot rename {} into place: {}", file, temporary.string(), std::strerror(saved));
  }
}

}  // namespace uberlm
