// The GGUF reader: a file written by llama.cpp's own Python writer (tests/oracle/fixtures_gguf.py) read
// back key by key and tensor by tensor, and hand-built files that break one rule each.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "expect_error.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(UBERLM_FIXTURE_DIR) / "gguf" / name; }

// Little-endian GGUF bytes, built field by field.
class GgufBuilder {
 public:
  GgufBuilder& u8(uint8_t v) { return raw(&v, 1); }
  GgufBuilder& u32(uint32_t v) { return raw(&v, 4); }
  GgufBuilder& u64(uint64_t v) { return raw(&v, 8); }
  GgufBuilder& f32(float v) { return raw(&v, 4); }
  GgufBuilder& str(const std::string& s) { return u64(s.size()).raw(s.data(), s.size()); }
  GgufBuilder& header(uint64_t tensors, uint64_t keys, uint32_t version = 3) {
    return raw("GGUF", 4).u32(version).u64(tensors).u64(keys);
  }
  GgufBuilder& key_u32(const std::string& key, uint32_t v) { return str(key).u32(static_cast<uint32_t>(GgufType::U32)).u32(v); }
  GgufBuilder& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t n : ne) u64(n);
    return u32(type).u64(offset);
  }
  // Zero bytes up to the next multiple of alignment, then `data_bytes` bytes of data.
  GgufBuilder& data(uint64_t data_bytes, uint64_t alignment = 32) {
    bytes_.resize((bytes_.size() + alignment - 1) / alignment * alignment + data_bytes, 0x3c);
    return *this;
  }
  GgufBuilder& raw(const void* p, size_t n) {
    bytes_.insert(bytes_.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return *this;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

GgufHeader parse(const GgufBuilder& builder) {
  return parse_gguf(builder.bytes().data(), builder.bytes().size(), "test.gguf");
}

// Parsing throws an Error whose message names the file and contains each of `parts`.
void expect_error(const GgufBuilder& builder, std::vector<std::string> parts) {
  parts.push_back("test.gguf");
  expect_error_containing([&] { parse(builder); }, parts);
}

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(stream), {});
}

TEST(GgufOracle, EveryValueTypeAndTensorTypeReadsBackAsTheWriterWroteIt) {
  ASSERT_TRUE(fs::exists(fixture("every_type.gguf"))) << "run tests/oracle/make_fixtures.py";
  auto file = GgufFile::open(fixture("every_type.gguf"));
  std::ifstream stream(fixture("every_type.json"));
  const nlohmann::json expected = nlohmann::json::parse(stream);
  const auto& meta = expected.at("metadata");

  EXPECT_EQ(file->header().version, 3u);
  EXPECT_EQ(file->header().alignment, 64u);
  EXPECT_EQ(file->header().data_offset % 64, 0u);
  EXPECT_EQ(file->string("general.architecture"), "test");
  const std::vector<std::pair<std::string, GgufType>> integers = {
      {"test.u8", GgufType::U8},   {"test.i8", GgufType::I8},   {"test.u16", GgufType::U16}, {"test.i16", GgufType::I16},
      {"test.u32", GgufType::U32}, {"test.i32", GgufType::I32}, {"test.i64", GgufType::I64}};
  for (const auto& [key, type] : integers) {
    EXPECT_EQ(file->value(key).type(), type) << key;
    EXPECT_EQ(file->integer(key, INT64_MIN, INT64_MAX), meta.at(key).get<int64_t>()) << key;
  }
  EXPECT_EQ(std::get<uint64_t>(file->value("test.u64").data), meta.at("test.u64").get<uint64_t>());
  EXPECT_THROW(file->integer("test.u64", 0, INT64_MAX), Error);  // past INT64_MAX
  EXPECT_EQ(file->value("test.f32").type(), GgufType::F32);
  EXPECT_EQ(file->number("test.f32"), 0.15625);
  EXPECT_EQ(file->value("test.f64").type(), GgufType::F64);
  EXPECT_EQ(file->number("test.f64"), meta.at("test.f64").get<double>());
  EXPECT_TRUE(file->boolean("test.bool"));
  EXPECT_EQ(file->string("test.string"), meta.at("test.string").get<std::string>());

  std::vector<int64_t> ints;
  for (const GgufValue& v : file->array("test.i32_array", GgufType::I32).values) ints.push_back(std::get<int32_t>(v.data));
  EXPECT_EQ(ints, meta.at("test.i32_array").get<std::vector<int64_t>>());
  std::vector<std::string> strings;
  for (const GgufValue& v : file->array("test.string_array", GgufType::String).values) {
    strings.push_back(std::get<std::string>(v.data));
  }
  EXPECT_EQ(strings, meta.at("test.string_array").get<std::vector<std::string>>());
  const GgufArray& nested = file->array("test.nested_array", GgufType::Array);
  ASSERT_EQ(nested.values.size(), 2u);
  const auto& inner = std::get<GgufArray>(nested.values[1].data);
  ASSERT_EQ(inner.values.size(), 1u);
  EXPECT_EQ(file->integer("test.u8", 0, 255), 200);

  const auto& tensors = expected.at("tensors");
  ASSERT_EQ(file->header().tensors.size(), tensors.size());
  for (const auto& [name, want] : tensors.items()) {
    const GgufTensorInfo& info = file->tensor(name);
    EXPECT_EQ(info.ne, want.at("ne").get<std::vector<uint64_t>>()) << name;
    EXPECT_EQ(ggml_type_name(info.type), want.at("type").get<std::string>()) << name;
    EXPECT_EQ(info.offset % 64, 0u) << name;
    const auto values = want.at("values").get<std::vector<float>>();
    ASSERT_EQ(info.elements, values.size()) << name;
    std::vector<float> ours(info.elements);
    ggml_dequantize(info.ggml_type(), file->tensor_data(name), static_cast<int64_t>(info.elements), ours.data());
    // gguf's numpy dequantisers compute d * q (+ m) in fp32 as we do; a fused multiply-add may differ
    // by one rounding of a value of magnitude <= max|x|.
    float max_abs = 0.0f;
    for (float v : values) max_abs = std::max(max_abs, std::fabs(v));
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_NEAR(ours[i], values[i], max_abs * 1.2e-7f) << name << " element " << i;
    }
  }
}

TEST(GgufOracle, EveryTruncationOfAValidFileIsRejected) {
  const std::vector<uint8_t> bytes = read_bytes(fixture("every_type.gguf"));
  ASSERT_FALSE(bytes.empty());
  const GgufHeader header = parse_gguf(bytes.data(), bytes.size(), "full.gguf");
  uint64_t end_of_data = 0;
  for (const auto& [name, info] : header.tensors) end_of_data = std::max(end_of_data, info.offset + info.bytes);
  const uint64_t needed = header.data_offset + end_of_data;
  for (uint64_t size = 0; size < needed; ++size) {
    EXPECT_THROW(parse_gguf(bytes.data(), size, "cut.gguf"), Error) << "prefix of " << size << " bytes";
  }
}

TEST(GgufFile, OpenNamesTheFileAndAccessorsNameTheKey) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("uberlm_gguf_test_{}", ::getpid());
  fs::create_directories(dir);
  GgufBuilder builder;
  builder.header(1, 2).key_u32("a.count", 7).str("a.name").u32(static_cast<uint32_t>(GgufType::String)).str("x");
  builder.tensor("w", {32, 2}, static_cast<uint32_t>(GgmlType::Q8_0), 0).data(2 * 34);
  {
    std::ofstream out(dir / "ok.gguf", std::ios::binary);
    out.write(reinterpret_cast<const char*>(builder.bytes().data()), builder.bytes().size());
  }
  auto file = GgufFile::open(dir / "ok.gguf");
  EXPECT_EQ(file->integer("a.count", 0, 10), 7);
  EXPECT_EQ(file->tensor("w").bytes, 68u);
  EXPECT_EQ(file->tensor_data("w")[0], 0x3c);
  auto message_of = [](auto&& call) {
    try {
      call();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of([&] { file->integer("a.count", 8, 10); }).find("'a.count' is 7, expected 8 to 10"), std::string::npos);
  EXPECT_NE(message_of([&] { file->string("a.count"); }).find("'a.count' must be a string, got u32"), std::string::npos);
  EXPECT_NE(message_of([&] { file->value("a.missing"); }).find("missing metadata key 'a.missing'"), std::string::npos);
  EXPECT_NE(message_of([&] { file->tensor("v"); }).find("no tensor 'v'"), std::string::npos);
  EXPECT_NE(message_of([&] { GgufFile::open(dir / "absent.gguf"); }).find("absent.gguf: cannot open"), std::string::npos);
  fs::remove_all(dir);
}

TEST(GgufParse, HeaderErrors) {
  expect_error(GgufBuilder().raw("GGUX", 4).u32(3).u64(0).u64(0), {"not a GGUF file"});
  expect_error(GgufBuilder().header(0, 0, 1), {"unsupported version 1"});
  expect_error(GgufBuilder().raw("GGUF", 4).u32(3).u64(0), {"metadata count", "runs past the end"});
  expect_error(GgufBuilder().header(0, uint64_t{1} << 60), {"metadata count", "cannot fit"});
  expect_error(GgufBuilder().header(uint64_t{1} << 60, 0), {"tensor count", "cannot fit"});
}

TEST(GgufParse, MetadataErrorsNameTheKey) {
  // Each file ends in 64 spare bytes, so the count checks pass and the entry itself is at fault.
  expect_error(GgufBuilder().header(0, 1).u64(1000).raw("k", 1).data(64, 1), {"metadata entry 0", "key of 1000 bytes"});
  expect_error(GgufBuilder().header(0, 1).str("k.long").u32(static_cast<uint32_t>(GgufType::String)).u64(~uint64_t{0}),
               {"key 'k.long'", "string value of 18446744073709551615 bytes"});
  expect_error(GgufBuilder().header(0, 1).str("k.arr").u32(static_cast<uint32_t>(GgufType::Array))
                   .u32(static_cast<uint32_t>(GgufType::U32)).u64(uint64_t{1} << 62),
               {"key 'k.arr'", "array of 4611686018427387904 u32 elements"});
  expect_error(GgufBuilder().header(0, 1).str("k.type").u32(13).u32(0), {"key 'k.type'", "unknown value type 13"});
  expect_error(GgufBuilder().header(0, 1).str("k.bool").u32(static_cast<uint32_t>(GgufType::Bool)).u8(2),
               {"key 'k.bool'", "bool value is 2"});
  expect_error(GgufBuilder().header(0, 1).str("k.cut").u32(static_cast<uint32_t>(GgufType::U64)).u32(1),
               {"key 'k.cut'", "u64 value", "runs past the end"});
  expect_error(GgufBuilder().header(0, 2).key_u32("k.twice", 1).key_u32("k.twice", 2), {"key 'k.twice'", "appears twice"});
  GgufBuilder deep;
  deep.header(0, 1).str("k.deep");
  deep.u32(static_cast<uint32_t>(GgufType::Array));
  for (int level = 0; level < 9; ++level) deep.u32(static_cast<uint32_t>(GgufType::Array)).u64(1);
  deep.u32(static_cast<uint32_t>(GgufType::U8)).u64(0);
  expect_error(deep, {"key 'k.deep'", "nested deeper than 8"});
}

TEST(GgufParse, AlignmentMustBeAU32PowerOfTwo) {
  expect_error(GgufBuilder().header(0, 1).key_u32("general.alignment", 48), {"general.alignment", "48 is not a power of two"});
  expect_error(GgufBuilder().header(0, 1).key_u32("general.alignment", 0), {"general.alignment", "0 is not a power of two"});
  expect_error(GgufBuilder().header(0, 1).str("general.alignment").u32(static_cast<uint32_t>(GgufType::U64)).u64(32),
               {"general.alignment", "must be u32, got u64"});
  // A valid alignment moves the data section and is what tensor offsets must be multiples of.
  GgufBuilder aligned;
  aligned.header(1, 1).key_u32("general.alignment", 256).tensor("t", {4}, 0, 0).data(16, 256);
  EXPECT_EQ(parse(aligned).data_offset, 256u);
  GgufBuilder misaligned;
  misaligned.header(2, 1).key_u32("general.alignment", 64).tensor("a", {4}, 0, 0).tensor("b", {4}, 0, 32).data(128, 64);
  expect_error(misaligned, {"tensor 'b'", "data offset 32 is not a multiple of the alignment 64"});
}

TEST(GgufParse, TensorInfoErrorsNameTheTensor) {
  expect_error(GgufBuilder().header(1, 0).tensor("blk.0.odd", {32, 2}, 99, 0).data(64), {"tensor 'blk.0.odd'", "unknown tensor type 99"});
  expect_error(GgufBuilder().header(1, 0).tensor("t.q4", {16, 2}, static_cast<uint32_t>(GgmlType::Q4_0), 0).data(64),
               {"tensor 't.q4'", "ne[0] = 16 is not a multiple of the 32-element Q4_0 block"});
  expect_error(GgufBuilder().header(1, 0).tensor("t.5d", {1, 1, 1, 1, 1}, 0, 0).data(4), {"tensor 't.5d'", "n_dims is 5"});
  expect_error(GgufBuilder().header(1, 0).tensor("t.0d", {}, 0, 0).data(64), {"tensor 't.0d'", "n_dims is 0"});
  expect_error(GgufBuilder().header(1, 0).tensor("t.big", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).data(4),
               {"tensor 't.big'", "overflow"});
  expect_error(GgufBuilder().header(2, 0).tensor("t", {4}, 0, 0).tensor("t", {4}, 0, 32).data(64), {"tensor 't'", "appears twice"});
  expect_error(GgufBuilder().header(1, 0).str("t.cut").u32(2).u64(4).raw("1234567", 7), {"tensor 't.cut'", "dimension", "runs past the end"});
}

TEST(GgufParse, TensorDataMustLieInsideTheFileWithoutOverlap) {
  expect_error(GgufBuilder().header(1, 0).tensor("t.out", {32, 4}, 0, 0).data(100), {"tensor 't.out'", "past the end of the 100-byte data section"});
  expect_error(GgufBuilder().header(1, 0).tensor("t.far", {4}, 0, uint64_t{1} << 63).data(64), {"tensor 't.far'", "past the end"});
  expect_error(GgufBuilder().header(2, 0).tensor("t.a", {32}, 0, 0).tensor("t.b", {4}, 0, 96).data(256),
               {"tensor 't.b' [96, +16) overlaps tensor 't.a' [0, +128)"});
  expect_error(GgufBuilder().header(1, 0).tensor("t.nodata", {4}, 0, 0), {"tensor 't.nodata'", "past the end of the 0-byte data section"});
  GgufBuilder ok;
  ok.header(2, 0).tensor("t.a", {32}, 0, 0).tensor("t.b", {4}, 0, 128).data(144);
  const GgufHeader header = parse(ok);
  EXPECT_EQ(header.tensor_order, (std::vector<std::string>{"t.a", "t.b"}));
  EXPECT_EQ(header.tensors.at("t.b").bytes, 16u);
}

}  // namespace
}  // namespace uberlm
