// safetensors reader and writer: round trips of every dtype on fresh random bytes, and hand-corrupted
// files, each of which must give an Error that names the file and (where there is one) the tensor.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "expect_error.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    dir_ = fs::temp_directory_path() / fmt::format("uberlm_safetensors_{}_{}", ::getpid(), seed_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<uint8_t> random_bytes(size_t n) {
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<uint8_t> bytes(n);
    for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng_));
    return bytes;
  }

  // A file with a hand-written header: u64 LE length, the header text as given, then `data_size`
  // random bytes.
  fs::path write_raw(const std::string& name, const std::string& header, size_t data_size) {
    fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary);
    uint64_t length = header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(length >> (8 * i)));
    out << header;
    auto data = random_bytes(data_size);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    return path;
  }

  // Expects open() to throw an Error whose message holds every one of `needles`.
  void expect_open_error(const fs::path& path, const std::vector<std::string>& needles) {
    expect_error_containing([&] { SafetensorsFile::open(path); }, needles);
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripEveryDtype) {
  SCOPED_TRACE(fmt::format("seed {}", seed_));
  const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3,
                       DType::U8,  DType::I8,  DType::I32,  DType::I64};
  std::uniform_int_distribution<int> dim(1, 7);
  struct Expected {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Expected> expected;
  for (DType dtype : all) {
    std::vector<int64_t> shape = {dim(rng_), dim(rng_), dim(rng_)};
    size_t bytes = dtype_size(dtype) * shape[0] * shape[1] * shape[2];
    expected.push_back({fmt::format("layers.{}.weight", dtype_name(dtype)), dtype, shape, random_bytes(bytes)});
  }
  expected.push_back({"scalar", DType::F32, {}, random_bytes(4)});
  expected.push_back({"empty", DType::BF16, {3, 0}, {}});

  std::vector<SafetensorsWriteEntry> entries;
  for (const auto& e : expected) entries.push_back({e.name, e.dtype, e.shape, e.bytes.data()});
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"seed", std::to_string(seed_)}};
  const fs::path path = dir_ / "model.safetensors";
  write_safetensors(path, entries, metadata);

  // Header padded with spaces so the data section starts 8-byte aligned; no temporary left behind.
  std::ifstream in(path, std::ios::binary);
  uint8_t length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);

  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->header().metadata, metadata);
  EXPECT_EQ(file->header().tensors.size(), expected.size());
  for (const auto& e : expected) {
    SCOPED_TRACE(e.name);
    ASSERT_TRUE(file->has(e.name));
    TensorView view = file->view(e.name);
    EXPECT_EQ(view.dtype, e.dtype);
    EXPECT_EQ(view.shape, e.shape);
    ASSERT_EQ(view.nbytes(), e.bytes.size());
    EXPECT_EQ(std::memcmp(view.data, e.bytes.data(), e.bytes.size()), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data) % dtype_size(e.dtype), 0u) << "unaligned data";
  }
}

TEST_F(SafetensorsTest, RewriteReplacesFile) {
  const fs::path path = dir_ / "a.safetensors";
  auto first = random_bytes(8), second = random_bytes(12);
  write_safetensors(path, {{"x", DType::F32, {2}, first.data()}});
  write_safetensors(path, {{"x", DType::F32, {3}, second.data()}});
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->view("x").shape, std::vector<int64_t>{3});
  EXPECT_EQ(std::memcmp(file->view("x").data, second.data(), 12), 0);
}

TEST_F(SafetensorsTest, WriteErrorNamesPath) {
  const fs::path path = dir_ / "no_such_folder" / "model.safetensors";
  auto bytes = random_bytes(4);
  try {
    write_safetensors(path, {{"x", DType::F32, {1}, bytes.data()}});
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
  }
}

TEST_F(SafetensorsTest, WriteRejectsDuplicateName) {
  auto bytes = random_bytes(4);
  try {
    write_safetensors(dir_ / "dup.safetensors", {{"x", DType::F32, {1}, bytes.data()}, {"x", DType::I32, {1}, bytes.data()}});
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("'x'"), std::string::npos) << error.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "dup.safetensors"));
}

TEST_F(SafetensorsTest, TruncatedFile) {
  const fs::path path = dir_ / "model.safetensors";
  auto bytes = random_bytes(64 * 4);
  write_safetensors(path, {{"weight", DType::F32, {64}, bytes.data()}});
  const auto full_size = fs::file_size(path);

  fs::resize_file(path, full_size - 1);  // cuts into the data section
  expect_open_error(path, {path.string(), "'weight'", "past the end"});
  fs::resize_file(path, 20);  // cuts into the header
  expect_open_error(path, {path.string(), "header length"});
  fs::resize_file(path, 5);  // not even the header length
  expect_open_error(path, {path.string(), "too short"});
  fs::resize_file(path, 0);
  expect_open_error(path, {path.string(), "too short"});
}

TEST_F(SafetensorsTest, MissingFile) { expect_open_error(dir_ / "absent.safetensors", {"absent.safetensors", "cannot open"}); }

TEST_F(SafetensorsTest, HeaderLengthPastEnd) {
  const fs::path path = dir_ / "long.safetensors";
  std::ofstream out(path, std::ios::binary);
  const uint64_t length = 0xffffffffffffff00ull;  // would wrap a careless 8 + length
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(length >> (8 * i)));
  out << "{}";
  out.close();
  expect_open_error(path, {path.string(), "header length 18446744073709551360 runs past the end"});
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  auto path = write_raw("bad.safetensors", R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})", 4);
  expect_open_error(path, {path.string(), "not valid JSON"});
  path = write_raw("array.safetensors", "[1, 2, 3]", 0);
  expect_open_error(path, {path.string(), "must be a JSON object"});
  path = write_raw("nul.safetensors", std::string("{\"a\0\": 1}", 9), 0);
  expect_open_error(path, {path.string(), "not valid JSON"});
  // nlohmann reports a number too large for a double as out_of_range, not as a parse error.
  path = write_raw("overflow.safetensors", R"({"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}})", 4);
  expect_open_error(path, {path.string(), "not valid JSON"});
}

TEST_F(SafetensorsTest, MalformedEntries) {
  struct Case {
    std::string entry;
    std::string needle;
  };
  const Case cases[] = {
      {R"("x")", "must be a JSON object"},
      {R"({"shape": [1], "data_offsets": [0, 4]})", "missing field 'dtype'"},
      {R"({"dtype": "F32", "data_offsets": [0, 4]})", "missing field 'shape'"},
      {R"({"dtype": "F32", "shape": [1]})", "missing field 'data_offsets'"},
      {R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1})", "unexpected field 'extra'"},
      {R"({"dtype": 3, "shape": [1], "data_offsets": [0, 4]})", "'dtype' must be a string"},
      {R"({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})", "non-negative integers, got -1"},
      {R"({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]})", "non-negative integers, got 1.5"},
      {R"({"dtype": "F32", "shape": 4, "data_offsets": [0, 4]})", "'shape' must be a list"},
      {R"({"dtype": "F32", "shape": [1], "data_offsets": [0]})", "'data_offsets' must be two"},
      {R"({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]})", "'data_offsets' must be two"},
      {R"({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]})", "end before they begin"},
      {R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]})", "past the end"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.entry);
    auto path = write_raw("entry.safetensors", R"({"model.norm.weight": )" + c.entry + "}", 16);
    expect_open_error(path, {path.string(), "'model.norm.weight'", c.needle});
  }
}

TEST_F(SafetensorsTest, UnknownDtype) {
  for (std::string dtype : {"F64", "BOOL", "F8_E5M2", "Q4_1", ""}) {
    auto path = write_raw("dtype.safetensors",
                          R"({"lm_head.weight": {"dtype": ")" + dtype + R"(", "shape": [2], "data_offsets": [0, 8]}})", 8);
    expect_open_error(path, {path.string(), "'lm_head.weight'", "unsupported dtype '" + dtype + "'"});
  }
}

TEST_F(SafetensorsTest, SizeMismatch) {
  auto path = write_raw("size.safetensors",
                        R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                        R"( "b": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [8, 18]}})",
                        24);
  expect_open_error(path, {path.string(), "'b'", "hold 10 bytes but BF16 [2, 3] needs 12"});
}

TEST_F(SafetensorsTest, ShapeOverflow) {
  // 2^32 x 2^32 elements: the element count alone passes 2^63; also 2^62 x 4 bytes.
  auto path = write_raw("huge.safetensors",
                        R"({"big": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0);
  expect_open_error(path, {path.string(), "'big'", "overflows"});
  path = write_raw("huge.safetensors",
                   R"({"big": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0);
  expect_open_error(path, {path.string(), "'big'", "overflows"});
  path = write_raw("huge.safetensors",
                   R"({"big": {"dtype": "F32", "shape": [18446744073709551615, 0], "data_offsets": [0, 0]}})", 0);
  expect_open_error(path, {path.string(), "'big'", "non-negative integers"});
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  auto path = write_raw("overlap.safetensors",
                        R"({"first": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                        R"( "second": {"dtype": "I32", "shape": [4], "data_offsets": [12, 28]}})",
                        32);
  expect_open_error(path, {path.string(), "'first'", "'second'", "overlaps"});
  // Same range twice.
  path = write_raw("same.safetensors",
                   R"({"p": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},)"
                   R"( "q": {"dtype": "I8", "shape": [4], "data_offsets": [4, 8]}})",
                   8);
  expect_open_error(path, {path.string(), "'p'", "'q'", "overlaps"});
}

TEST_F(SafetensorsTest, EmptyTensorsMayShareAnOffset) {
  auto path = write_raw("empty.safetensors",
                        R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},)"
                        R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                        R"( "c": {"dtype": "I64", "shape": [2, 0], "data_offsets": [4, 4]}})",
                        4);
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->header().tensors.size(), 3u);
  EXPECT_EQ(file->view("c").numel(), 0);
}

TEST_F(SafetensorsTest, OffsetsOutOfBounds) {
  auto path = write_raw("bounds.safetensors",
                        R"({"embed_tokens.weight": {"dtype": "F16", "shape": [4], "data_offsets": [4, 12]}})", 11);
  expect_open_error(path, {path.string(), "'embed_tokens.weight'", "[4, 12] lie past the end of the 11-byte data section"});
}

TEST_F(SafetensorsTest, DuplicateTensorInHeader) {
  auto path = write_raw("dup.safetensors",
                        R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
                        R"( "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                        2);
  expect_open_error(path, {path.string(), "'w' appears twice"});
}

TEST_F(SafetensorsTest, Metadata) {
  auto path = write_raw("meta.safetensors", R"({"__metadata__": {"format": 1}})", 0);
  expect_open_error(path, {path.string(), "'format' must be a string"});
  path = write_raw("meta.safetensors", R"({"__metadata__": ["pt"]})", 0);
  expect_open_error(path, {path.string(), "'__metadata__' must be an object"});
  path = write_raw("meta.safetensors", R"({"__metadata__": {"format": "pt"}})", 0);
  EXPECT_EQ(SafetensorsFile::open(path)->header().metadata.at("format"), "pt");
}

TEST_F(SafetensorsTest, ViewOfMissingTensor) {
  const fs::path path = dir_ / "model.safetensors";
  auto bytes = random_bytes(4);
  write_safetensors(path, {{"present", DType::I32, {1}, bytes.data()}});
  auto file = SafetensorsFile::open(path);
  EXPECT_FALSE(file->has("absent"));
  try {
    file->view("absent");
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("'absent'"), std::string::npos) << error.what();
  }
}

TEST_F(SafetensorsTest, ParseHeaderDirectly) {
  auto header = parse_safetensors_header(R"({"t": {"dtype": "I64", "shape": [2, 1], "data_offsets": [8, 24]}}   )", 24,
                                         "mem");
  const SafetensorsEntry& entry = header.tensors.at("t");
  EXPECT_EQ(entry.dtype, DType::I64);
  EXPECT_EQ(entry.shape, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(entry.begin, 8u);
  EXPECT_EQ(entry.end, 24u);
  EXPECT_THROW(parse_safetensors_header(R"({"t": {"dtype": "I64", "shape": [2, 1], "data_offsets": [8, 24]}})", 23, "mem"),
               Error);
}

}  // namespace
}  // namespace uberlm
