#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>

#include <fmt/format.h>

#include "core/error.h"

namespace uberlm {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;               // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;       // arrays of arrays: bounded so a hostile file cannot exhaust the stack
constexpr uint64_t kMinMetadataBytes = 13;  // u64 key length + u32 type + a 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 32;  // u64 name length + u32 n_dims + u64 ne[0] + u32 type + u64 offset

// A name or key as it appears in a message: long or binary names from a corrupt file are cut short.
std::string printable(const std::string& name) {
  constexpr size_t kMaxShown = 80;
  std::string shown;
  for (size_t i = 0; i < name.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    shown += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c)) : fmt::format("\\x{:02x}", c);
  }
  if (name.size() > kMaxShown) shown += fmt::format("... ({} bytes)", name.size());
  return shown;
}

// Byte size of a scalar value type; 0 for String and Array.
uint64_t scalar_size(GgufType type) {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::String: case GgufType::Array: return 0;
  }
  return 0;
}

// Sequential little-endian reads over the file image; every read is bounds-checked and every error
// names the file and what was being read (`context_`: the key or tensor).
class Reader {
 public:
  Reader(const uint8_t* bytes, uint64_t size, const std::string& file) : bytes_(bytes), size_(size), file_(file) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return size_ - position_; }
  void set_context(std::string context) { context_ = std::move(context); }

  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail("gguf {}: {}{}", file_, context_.empty() ? "" : context_ + ": ",
         fmt::format(format, std::forward<Args>(args)...));
  }

  template <typename T>
  T scalar(const char* what) {
    if (remaining() < sizeof(T)) {
      bad("{} ({} bytes at offset {}) runs past the end of the {}-byte file", what, sizeof(T), position_, size_);
    }
    T value;
    std::memcpy(&value, bytes_ + position_, sizeof(T));  // the file is little-endian, as is every target we build for
    position_ += sizeof(T);
    return value;
  }

  std::string string(const char* what) {
    const uint64_t length = scalar<uint64_t>(what);
    if (length > remaining()) {
      bad("{} of {} bytes at offset {} runs past the end of the {}-byte file", what, length, position_, size_);
    }
    std::string text(reinterpret_cast<const char*>(bytes_ + position_), length);
    position_ += length;
    return text;
  }

  GgufType value_type(const char* what) {
    const uint32_t type = scalar<uint32_t>(what);
    if (type > static_cast<uint32_t>(GgufType::F64)) bad("unknown value type {}", type);
    return static_cast<GgufType>(type);
  }

  GgufValue value(GgufType type, int depth) {
    switch (type) {
      case GgufType::U8: return {scalar<uint8_t>("u8 value")};
      case GgufType::I8: return {scalar<int8_t>("i8 value")};
      case GgufType::U16: return {scalar<uint16_t>("u16 value")};
      case GgufType::I16: return {scalar<int16_t>("i16 value")};
      case GgufType::U32: return {scalar<uint32_t>("u32 value")};
      case GgufType::I32: return {scalar<int32_t>("i32 value")};
      case GgufType::F32: return {scalar<float>("f32 value")};
      case GgufType::U64: return {scalar<uint64_t>("u64 value")};
      case GgufType::I64: return {scalar<int64_t>("i64 value")};
      case GgufType::F64: return {scalar<double>("f64 value")};
      case GgufType::Bool: {
        const uint8_t byte = scalar<uint8_t>("bool value");
        if (byte > 1) bad("bool value is {}, not 0 or 1", byte);
        return {byte == 1};
      }
      case GgufType::String: return {string("string value")};
      case GgufType::Array: return {array(depth)};
    }
    bad("unknown value type {}", static_cast<uint32_t>(type));
  }

 private:
  GgufArray array(int depth) {
    if (depth >= kMaxArrayNesting) bad("arrays nested deeper than {} levels", kMaxArrayNesting);
    GgufArray result;
    result.element_type = value_type("array element type");
    const uint64_t count = scalar<uint64_t>("array length");
    // Each element takes at least this many bytes, so a count the file cannot hold is refused before
    // any memory is reserved for it.
    const uint64_t min_element = result.element_type == GgufType::String  ? 8
                                 : result.element_type == GgufType::Array ? 12
                                                                          : scalar_size(result.element_type);
    if (count > remaining() / min_element) {
      bad("array of {} {} elements at offset {} runs past the end of the {}-byte file", count,
          gguf_type_name(result.element_type), position_, size_);
    }
    result.values.reserve(count);
    for (uint64_t i = 0; i < count; ++i) result.values.push_back(value(result.element_type, depth + 1));
    return result;
  }

  const uint8_t* bytes_;
  uint64_t size_;
  uint64_t position_ = 0;
  const std::string& file_;
  std::string context_;
};

GgufTensorInfo read_tensor_info(Reader& reader) {
  GgufTensorInfo info;
  const uint32_t n_dims = reader.scalar<uint32_t>("n_dims");
  if (n_dims < 1 || n_dims > kMaxDims) reader.bad("n_dims is {}, expected 1 to {}", n_dims, kMaxDims);
  info.elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t extent = reader.scalar<uint64_t>("dimension");
    if (extent > static_cast<uint64_t>(INT64_MAX) ||
        __builtin_mul_overflow(info.elements, extent, &info.elements) ||
        info.elements > static_cast<uint64_t>(INT64_MAX)) {
      reader.bad("dimensions overflow 2^63 elements at ne[{}] = {}", d, extent);
    }
    info.ne.push_back(extent);
  }
  info.type = reader.scalar<uint32_t>("tensor type");
  const auto traits = ggml_type_traits(info.type);
  if (!traits) reader.bad("unknown tensor type {}", info.type);
  if (info.ne[0] % static_cast<uint64_t>(traits->block_size) != 0) {
    reader.bad("row length ne[0] = {} is not a multiple of the {}-element {} block", info.ne[0], traits->block_size,
               traits->name);
  }
  // elements / block_size blocks of block_bytes each; the division is exact since ne[0] is whole blocks.
  if (__builtin_mul_overflow(info.elements / static_cast<uint64_t>(traits->block_size),
                             static_cast<uint64_t>(traits->block_bytes), &info.bytes)) {
    reader.bad("{} elements of {} overflow 2^64 bytes", info.elements, traits->name);
  }
  info.offset = reader.scalar<uint64_t>("data offset");
  return info;
}

}  // namespace

const char* gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "unknown";
}

GgufHeader parse_gguf(const uint8_t* bytes, uint64_t size, const std::string& file) {
  Reader reader(bytes, size, file);
  GgufHeader header;
  const uint32_t magic = reader.scalar<uint32_t>("magic");
  if (magic != kMagic) reader.bad("not a GGUF file (magic {:#010x}, expected {:#010x} \"GGUF\")", magic, kMagic);
  header.version = reader.scalar<uint32_t>("version");
  if (header.version != 2 && header.version != 3) {
    reader.bad("unsupported version {} (supported: 2 and 3)", header.version);
  }
  const uint64_t tensor_count = reader.scalar<uint64_t>("tensor count");
  const uint64_t metadata_count = reader.scalar<uint64_t>("metadata count");
  if (metadata_count > reader.remaining() / kMinMetadataBytes) {
    reader.bad("metadata count {} cannot fit in the {} bytes left", metadata_count, reader.remaining());
  }
  if (tensor_count > reader.remaining() / kMinTensorInfoBytes) {
    reader.bad("tensor count {} cannot fit in the {} bytes left", tensor_count, reader.remaining());
  }

  for (uint64_t i = 0; i < metadata_count; ++i) {
    reader.set_context(fmt::format("metadata entry {}", i));
    std::string key = reader.string("key");
    reader.set_context(fmt::format("key '{}'", printable(key)));
    const GgufType type = reader.value_type("value type");
    GgufValue value = reader.value(type, 0);
    if (!header.metadata.emplace(key, std::move(value)).second) reader.bad("appears twice");
  }

  if (auto it = header.metadata.find("general.alignment"); it != header.metadata.end()) {
    reader.set_context("key 'general.alignment'");
    if (it->second.type() != GgufType::U32) reader.bad("must be u32, got {}", gguf_type_name(it->second.type()));
    const uint32_t alignment = std::get<uint32_t>(it->second.data);
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) reader.bad("{} is not a power of two", alignment);
    header.alignment = alignment;
  } else {
    header.alignment = kDefaultAlignment;
  }

  for (uint64_t i = 0; i < tensor_count; ++i) {
    reader.set_context(fmt::format("tensor info {}", i));
    std::string name = reader.string("name");
    reader.set_context(fmt::format("tensor '{}'", printable(name)));
    GgufTensorInfo info = read_tensor_info(reader);
    if (info.offset % header.alignment != 0) {
      reader.bad("data offset {} is not a multiple of the alignment {}", info.offset, header.alignment);
    }
    if (!header.tensors.emplace(name, std::move(info)).second) reader.bad("appears twice");
    header.tensor_order.push_back(std::move(name));
  }
  reader.set_context("");

  // The data section starts at the next multiple of the alignment (position <= size, no overflow).
  const uint64_t end_of_infos = reader.position();
  header.data_offset = (end_of_infos + header.alignment - 1) / header.alignment * header.alignment;
  if (header.data_offset > size) {
    if (tensor_count > 0) {
      reader.bad("data section at offset {} (aligned to {}) starts past the end of the {}-byte file",
                 header.data_offset, header.alignment, size);
    }
    header.data_offset = size;
  }
  const uint64_t data_size = size - header.data_offset;
  for (const auto& [name, info] : header.tensors) {
    if (info.offset > data_size || info.bytes > data_size - info.offset) {
      fail("gguf {}: tensor '{}': data [{}, +{}) lies past the end of the {}-byte data section", file,
           printable(name), info.offset, info.bytes, data_size);
    }
  }
  // Sorted by offset, each tensor must start at or after the end of the one before it.
  std::vector<const std::pair<const std::string, GgufTensorInfo>*> by_offset;
  for (const auto& item : header.tensors) by_offset.push_back(&item);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return std::tie(a->second.offset, a->second.bytes) < std::tie(b->second.offset, b->second.bytes);
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& [previous_name, previous] = *by_offset[i - 1];
    const auto& [name, info] = *by_offset[i];
    if (info.offset < previous.offset + previous.bytes) {
      fail("gguf {}: tensor '{}' [{}, +{}) overlaps tensor '{}' [{}, +{})", file, printable(name), info.offset,
           info.bytes, printable(previous_name), previous.offset, previous.bytes);
    }
  }
  return header;
}

std::unique_ptr<GgufFile> GgufFile::open(const std::filesystem::path& path) {
  const std::string file = path.string();
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the S_ISREG check below refuses it.
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("gguf {}: cannot open: {}", file, std::strerror(errno));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    int saved = errno;
    ::close(fd);
    fail("gguf {}: cannot stat: {}", file, std::strerror(saved));
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    fail("gguf {}: not a regular file", file);
  }
  const uint64_t file_size = static_cast<uint64_t>(info.st_size);
  if (file_size == 0) {
    ::close(fd);
    fail("gguf {}: file is empty", file);
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int saved = errno;
  ::close(fd);
  if (mapping == MAP_FAILED) fail("gguf {}: mmap failed: {}", file, std::strerror(saved));

  // Owns the mapping from here, so a validation error below unmaps it.
  std::unique_ptr<GgufFile> result(new GgufFile());
  result->path_ = path;
  result->mapping_ = static_cast<const uint8_t*>(mapping);
  result->mapping_size_ = file_size;
  result->header_ = parse_gguf(result->mapping_, file_size, file);
  return result;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(const_cast<uint8_t*>(mapping_), mapping_size_);
}

const GgufValue& GgufFile::value(const std::string& key) const {
  auto it = header_.metadata.find(key);
  if (it == header_.metadata.end()) fail("gguf {}: missing metadata key '{}'", path_.string(), key);
  return it->second;
}

int64_t GgufFile::integer(const std::string& key, int64_t min, int64_t max) const {
  const GgufValue& v = value(key);
  // Every integer alternative widened to i64, except a u64 past INT64_MAX, which no range admits.
  bool in_i64 = true;
  const int64_t number = std::visit(
      [&](const auto& x) -> int64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, uint64_t>) {
          in_i64 = x <= static_cast<uint64_t>(INT64_MAX);
          return static_cast<int64_t>(x);
        } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<int64_t>(x);
        } else {
          fail("gguf {}: key '{}' must be an integer, got {}", path_.string(), key, gguf_type_name(v.type()));
        }
      },
      v.data);
  if (!in_i64 || number < min || number > max) {
    fail("gguf {}: key '{}' is {}, expected {} to {}", path_.string(), key,
         in_i64 ? fmt::format("{}", number) : fmt::format("{}", std::get<uint64_t>(v.data)), min, max);
  }
  return number;
}

double GgufFile::number(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type() == GgufType::F32) return std::get<float>(v.data);
  if (v.type() == GgufType::F64) return std::get<double>(v.data);
  fail("gguf {}: key '{}' must be f32 or f64, got {}", path_.string(), key, gguf_type_name(v.type()));
}

bool GgufFile::boolean(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type() != GgufType::Bool) {
    fail("gguf {}: key '{}' must be bool, got {}", path_.string(), key, gguf_type_name(v.type()));
  }
  return std::get<bool>(v.data);
}

const std::string& GgufFile::string(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type() != GgufType::String) {
    fail("gguf {}: key '{}' must be a string, got {}", path_.string(), key, gguf_type_name(v.type()));
  }
  return std::get<std::string>(v.data);
}

const GgufArray& GgufFile::array(const std::string& key, GgufType element_type) const {
  const GgufValue& v = value(key);
  if (v.type() != GgufType::Array || std::get<GgufArray>(v.data).element_type != element_type) {
    fail("gguf {}: key '{}' must be an array of {}, got {}", path_.string(), key, gguf_type_name(element_type),
         v.type() == GgufType::Array
             ? fmt::format("an array of {}", gguf_type_name(std::get<GgufArray>(v.data).element_type))
             : gguf_type_name(v.type()));
  }
  return std::get<GgufArray>(v.data);
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  auto it = header_.tensors.find(name);
  if (it == header_.tensors.end()) fail("gguf {}: no tensor '{}'", path_.string(), name);
  return it->second;
}

const uint8_t* GgufFile::tensor_data(const std::string& name) const {
  return mapping_ + header_.data_offset + tensor(name).offset;
}

}  // namespace uberlm
