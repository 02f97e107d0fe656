// NVFP4 against the external packages (tests/oracle/fixtures_nvfp4.py): our quantiser writes ModelOpt's
// bytes, our dequantiser gives ModelOpt's and compressed-tensors' values bit for bit; checkpoints in both
// layouts (and a mixed one) load and match transformers run on the package-dequantised weights; the
// `quantize` writer, `--quantize nvfp4` at load, and the loader's errors.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/nvfp4.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/quantize.h"
#include "runtime/cpu_backend.h"
#include "runtime/sampler.h"
#include "batch_util.h"
#include "oracle_reference.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

// fp32 engine vs fp32 transformers on identical (bit-exact dequantised) weights: only summation order differs.
constexpr double kRelativeTolerance = 1e-4;

fs::path fixture_dir() { return fs::path(UBERLM_FIXTURE_DIR) / "nvfp4"; }
fs::path model_fixture(const std::string& name) { return fixture_dir() / "models" / name; }

std::vector<uint8_t> bytes_of(const TensorView& view) {
  const auto* data = static_cast<const uint8_t*>(view.data);
  return {data, data + view.nbytes()};
}

// A fresh folder under the system temp dir, removed at the end of the test.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("uberlm_nvfp4_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// --- tensor cases -------------------------------------------------------------------------------------

std::vector<fs::path> tensor_cases() {
  std::vector<fs::path> cases;
  for (const auto& item : fs::directory_iterator(fixture_dir() / "tensors")) cases.push_back(item.path());
  std::sort(cases.begin(), cases.end());
  return cases;
}

TEST(Nvfp4Oracle, QuantiserWritesModelOptBytesAndDequantisesAsBothPackages) {
  ASSERT_TRUE(fs::exists(fixture_dir() / "tensors")) << "run tests/oracle/make_fixtures.py";
  int modelopt_cases = 0, ct_cases = 0;
  for (const fs::path& path : tensor_cases()) {
    SCOPED_TRACE(path.filename().string());
    auto file = SafetensorsFile::open(path);
    const TensorView input = file->view("input");
    const int64_t rows = input.dim(0), cols = input.dim(1);
    const Nvfp4Tensor ours = quantize_nvfp4(input.as<float>(), rows, cols, path.stem().string());

    if (file->has("modelopt_packed")) {
      ++modelopt_cases;
      EXPECT_EQ(ours.global_scale, *file->view("modelopt_global").as<float>());
      EXPECT_EQ(ours.scales, bytes_of(file->view("modelopt_scales")));
      EXPECT_EQ(ours.packed, bytes_of(file->view("modelopt_packed")));
      const Nvfp4Weight theirs{rows, cols, file->view("modelopt_packed").as<uint8_t>(),
                               file->view("modelopt_scales").as<uint8_t>(), *file->view("modelopt_global").as<float>()};
      const std::vector<float> dequant = dequantize_nvfp4(theirs);
      // Equal values, bit for bit but for the sign of zero: ModelOpt's table maps code 8 to +0, we give -0.
      const float* expected = file->view("modelopt_dequant").as<float>();
      int mismatches = 0;
      for (int64_t i = 0; i < rows * cols; ++i) mismatches += !(dequant[i] == expected[i]);
      EXPECT_EQ(mismatches, 0) << "ModelOpt dequant differs";
    }

    ++ct_cases;
    const float divisor = *file->view("ct_global").as<float>();
    Nvfp4Weight ct{rows, cols, file->view("ct_packed").as<uint8_t>(), file->view("ct_scales").as<uint8_t>(),
                   global_scale_from_compressed_tensors(divisor)};
    ct.global_divisor = divisor;
    const std::vector<float> dequant = dequantize_nvfp4(ct);
    const TensorView expected = file->view("ct_dequant");
    EXPECT_EQ(std::memcmp(dequant.data(), expected.data, expected.nbytes()), 0) << "compressed-tensors dequant differs";
    const TensorView decompressed = file->view("ct_decompressed");
    int bf16_mismatches = 0;
    for (int64_t i = 0; i < rows * cols; ++i) bf16_mismatches += f32_to_bf16(dequant[i]) != decompressed.as<uint16_t>()[i];
    EXPECT_EQ(bf16_mismatches, 0) << "compressed-tensors' bf16 decompress differs";

    // compressed-tensors quantises with its own recipe (an inverse global scale, zero blocks scaled 0.125,
    // no 2^-9 floor): shown, not required; the writer follows ModelOpt, whose layout it writes.
    int differing_bytes = 0;
    const std::vector<uint8_t> ct_packed = bytes_of(file->view("ct_packed"));
    for (size_t i = 0; i < ct_packed.size(); ++i) differing_bytes += ct_packed[i] != ours.packed[i];
    RecordProperty(path.stem().string() + "_bytes_unlike_compressed_tensors", differing_bytes);
  }
  EXPECT_GE(modelopt_cases, 8);
  EXPECT_GE(ct_cases, 9);
}

// --- checkpoints --------------------------------------------------------------------------------------

// Prefill and greedy decode of `model` against `reference_dir`'s transformers logits.
void expect_matches_reference(const Model& model, const fs::path& reference_dir) {
  const OracleReference ref = load_oracle_reference(reference_dir);
  const int vocab = model.config.vocab_size;
  const int prompt_len = static_cast<int>(ref.prompt.size());
  ASSERT_GE(prompt_len, 40);
  ASSERT_GE(ref.decode_ids.size(), 16u);
  CpuBackend backend(model, 1);
  ForwardResult result = backend.forward(single_run(ref.prompt, 0, 0, LogitRows::All));
  for (int p = 0; p < prompt_len; ++p) {
    ASSERT_LE(max_relative_error(&result.logits[p * vocab], &ref.prefill_logits[p * vocab], vocab), kRelativeTolerance)
        << "prefill position " << p;
  }
  int32_t next = argmax(&result.logits[(prompt_len - 1) * vocab], vocab);
  for (size_t step = 0; step < ref.decode_ids.size(); ++step) {
    ASSERT_EQ(next, ref.decode_ids[step]) << "greedy token at step " << step;
    result = backend.forward(single_run({next}, 0, prompt_len + static_cast<int64_t>(step)));
    ASSERT_LE(max_relative_error(result.logits.data(), &ref.decode_logits[step * vocab], vocab), kRelativeTolerance)
        << "decode step " << step;
    next = argmax(result.logits.data(), vocab);
  }
}

// Checks which layers are NVFP4: all but lm_head, and (keep_gdn) not the linear_attn projections.
void expect_nvfp4_layers(const Model& model, bool keep_gdn) {
  int quantised = 0;
  for (const LinearWeight* layer : all_linear_layers(model.weights, model.config)) {
    const bool expected = layer->name != "lm_head" &&
                          !(keep_gdn && layer->name.find(".linear_attn.") != std::string::npos);
    EXPECT_EQ(layer->nvfp4.has_value(), expected) << layer->name;
    quantised += layer->nvfp4.has_value();
  }
  EXPECT_GT(quantised, 0);
}

class Nvfp4CheckpointOracle : public ::testing::TestWithParam<std::string> {};

TEST_P(Nvfp4CheckpointOracle, LoadsAndMatchesTransformersOnDequantisedWeights) {
  const fs::path dir = model_fixture(GetParam());
  ASSERT_TRUE(fs::exists(dir)) << "missing fixture " << dir << " (run tests/oracle/make_fixtures.py)";
  auto model = Model::load(dir);
  expect_nvfp4_layers(*model, GetParam() == "ct_mixed");
  expect_matches_reference(*model, dir);
}

INSTANTIATE_TEST_SUITE_P(Layouts, Nvfp4CheckpointOracle, ::testing::Values("modelopt", "ct", "ct_mixed"));

// --- the writer and load-time quantisation ---------------------------------------------------------------

// Every tensor of a checkpoint folder's weight files by name.
std::map<std::string, std::vector<uint8_t>> tensor_bytes(const fs::path& dir) {
  std::map<std::string, std::vector<uint8_t>> tensors;
  for (const auto& item : fs::directory_iterator(dir)) {
    if (item.path().extension() != ".safetensors" || item.path().filename() == "reference.safetensors") continue;
    auto file = SafetensorsFile::open(item.path());
    for (const auto& [name, entry] : file->header().tensors) tensors[name] = bytes_of(file->view(name));
  }
  return tensors;
}

TEST(Nvfp4Quantize, WritesModelOptsCheckpointByteForByte) {
  ScratchDir scratch("writer");
  const fs::path out = scratch.path() / "out";
  QuantizeOptions options{model_fixture("bf16"), out};
  const QuantizeSummary summary = quantize_checkpoint(options);
  EXPECT_GT(summary.quantised_tensors, 0);
  EXPECT_LT(summary.bytes_out, summary.bytes_in);

  // ModelOpt quantised the same bf16 model in the fixture: every quantised tensor must be byte-identical
  // (its input_scale, an activation scale we do not calibrate, aside).
  std::map<std::string, std::vector<uint8_t>> ours = tensor_bytes(out), theirs = tensor_bytes(model_fixture("modelopt"));
  for (auto it = theirs.begin(); it != theirs.end();) it = it->first.ends_with(".input_scale") ? theirs.erase(it) : ++it;
  ASSERT_EQ(ours.size(), theirs.size());
  for (const auto& [name, bytes] : theirs) {
    ASSERT_TRUE(ours.count(name)) << name;
    EXPECT_EQ(ours[name], bytes) << name;
  }
  nlohmann::json config = nlohmann::json::parse(std::ifstream(out / "config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "modelopt");
  EXPECT_EQ(config["quantization_config"]["quant_algo"], "NVFP4");
  EXPECT_TRUE(fs::exists(out / "hf_quant_config.json"));
  EXPECT_TRUE(fs::exists(out / "generation_config.json"));

  auto model = Model::load(out);
  expect_nvfp4_layers(*model, false);
  expect_matches_reference(*model, model_fixture("modelopt"));
}

TEST(Nvfp4Quantize, ExclusionsKeepLayersBf16) {
  ScratchDir scratch("exclude");
  QuantizeOptions options{model_fixture("bf16"), scratch.path() / "out"};
  options.exclude.push_back("linear_attn\\.");
  quantize_checkpoint(options);
  auto model = Model::load(scratch.path() / "out");
  expect_nvfp4_layers(*model, true);
}

TEST(Nvfp4Quantize, RefusesToOverwriteUnlessForced) {
  ScratchDir scratch("overwrite");
  const fs::path out = scratch.path() / "out";
  fs::create_directories(out);
  std::ofstream(out / "keep.txt") << "mine";
  QuantizeOptions options{model_fixture("bf16"), out};
  EXPECT_THROW(quantize_checkpoint(options), Error);
  EXPECT_TRUE(fs::exists(out / "keep.txt"));
  options.force = true;
  quantize_checkpoint(options);
  EXPECT_FALSE(fs::exists(out / "keep.txt"));
  EXPECT_TRUE(fs::exists(out / "hf_quant_config.json"));
}

// Copies `source` to `dest`, passing each weight tensor (name, dtype, shape, bytes) through `edit`, which
// may change it or return false to drop it.
using TensorEdit = std::function<bool(const std::string&, DType&, std::vector<int64_t>&, std::vector<uint8_t>&)>;
void copy_checkpoint(const fs::path& source, const fs::path& dest, const TensorEdit& edit) {
  fs::create_directories(dest);
  for (const auto& item : fs::directory_iterator(source)) {
    if (item.path().extension() != ".safetensors") fs::copy_file(item.path(), dest / item.path().filename());
  }
  auto file = SafetensorsFile::open(source / "model.safetensors");
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<std::tuple<std::string, DType, std::vector<int64_t>>> kept;
  for (const auto& [name, entry] : file->header().tensors) {
    DType dtype = entry.dtype;
    std::vector<int64_t> shape = entry.shape;
    std::vector<uint8_t> bytes = bytes_of(file->view(name));
    if (!edit(name, dtype, shape, bytes)) continue;
    buffers.push_back(std::move(bytes));
    kept.emplace_back(name, dtype, shape);
  }
  std::vector<SafetensorsWriteEntry> entries;
  for (size_t i = 0; i < kept.size(); ++i) {
    entries.push_back({std::get<0>(kept[i]), std::get<1>(kept[i]), std::get<2>(kept[i]), buffers[i].data()});
  }
  write_safetensors(dest / "model.safetensors", entries);
}

TEST(Nvfp4Quantize, NonFiniteWeightFailsAndLeavesNoFolder) {
  ScratchDir scratch("nonfinite");
  const fs::path bad = scratch.path() / "bad", out = scratch.path() / "out";
  copy_checkpoint(model_fixture("bf16"), bad, [](const std::string& name, DType&, std::vector<int64_t>&,
                                                 std::vector<uint8_t>& bytes) {
    if (name == "model.layers.2.mlp.up_proj.weight") {
      const uint16_t inf = 0x7f80;  // bf16 +Inf
      std::memcpy(bytes.data() + 2 * 70, &inf, 2);
    }
    return true;
  });
  try {
    quantize_checkpoint(QuantizeOptions{bad, out});
    FAIL() << "quantised an Inf";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("model.layers.2.mlp.up_proj.weight"), std::string::npos) << error.what();
  }
  for (const auto& item : fs::directory_iterator(scratch.path())) EXPECT_EQ(item.path().filename(), "bad");
}

// A quantize killed outright leaves `.out.partial.PID` behind. The next run removes it once that PID no
// longer runs, and leaves alone the folder of a PID that runs (another quantize, writing now).
TEST(Nvfp4Quantize, RemovesPartialFoldersOfKilledRuns) {
  ScratchDir scratch("stale");
  const pid_t finished = ::fork();
  if (finished == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(finished, nullptr, 0), finished);
  const fs::path stale = scratch.path() / fmt::format(".out.partial.{}", finished);
  const fs::path running = scratch.path() / fmt::format(".out.partial.{}", ::getppid());
  for (const fs::path& folder : {stale, running}) {
    fs::create_directories(folder);
    std::ofstream(folder / "model.safetensors") << "half a shard";
  }
  const QuantizeSummary summary = quantize_checkpoint(QuantizeOptions{model_fixture("bf16"), scratch.path() / "out"});
  ASSERT_EQ(summary.removed_stale_folders.size(), 1u);
  EXPECT_EQ(fs::path(summary.removed_stale_folders[0]).filename(), stale.filename());
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(running / "model.safetensors"));
  EXPECT_TRUE(fs::exists(scratch.path() / "out" / "hf_quant_config.json"));
}

TEST(Nvfp4Quantize, AtLoadEqualsTheWrittenCheckpoint) {
  auto model = Model::load(model_fixture("bf16"));
  const int quantised = quantize_model_at_load(*model);
  EXPECT_EQ(quantised, static_cast<int>(all_linear_layers(model->weights, model->config).size()) - 1);  // all but lm_head
  expect_nvfp4_layers(*model, false);
  expect_matches_reference(*model, model_fixture("modelopt"));
}

// --- loader errors ------------------------------------------------------------------------------------

// Loads a copy of the ModelOpt fixture edited by `edit` and returns the error message ("" if it loaded).
std::string load_error(const TensorEdit& edit, const std::function<void(const fs::path&)>& edit_files = {}) {
  ScratchDir scratch("loader");
  const fs::path dir = scratch.path() / "model";
  copy_checkpoint(model_fixture("modelopt"), dir, edit);
  if (edit_files) edit_files(dir);
  try {
    Model::load(dir);
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

constexpr const char* kLayer = "model.layers.1.mlp.down_proj";

TEST(Nvfp4Loader, MissingScaleIsAnErrorNamingIt) {
  const std::string message = load_error([](const std::string& name, DType&, std::vector<int64_t>&, std::vector<uint8_t>&) {
    return name != std::string(kLayer) + ".weight_scale_2";
  });
  EXPECT_NE(message.find("layers.1.mlp.down_proj.weight_scale_2"), std::string::npos) << message;
}

TEST(Nvfp4Loader, InconsistentScaleShapeIsAnError) {
  const std::string message = load_error([](const std::string& name, DType&, std::vector<int64_t>& shape,
                                            std::vector<uint8_t>& bytes) {
    if (name == std::string(kLayer) + ".weight_scale") {
      shape = {shape[0] * shape[1] / 2, 2};  // same bytes, wrong layout
    }
    (void)bytes;
    return true;
  });
  EXPECT_NE(message.find(std::string(kLayer) + ".weight_scale"), std::string::npos) << message;
}

TEST(Nvfp4Loader, ZeroOrNonFiniteGlobalScaleIsAnError) {
  for (float bad : {0.0f, INFINITY, NAN, -1.0f}) {
    const std::string message = load_error([bad](const std::string& name, DType&, std::vector<int64_t>&,
                                                 std::vector<uint8_t>& bytes) {
      if (name == std::string(kLayer) + ".weight_scale_2") std::memcpy(bytes.data(), &bad, 4);
      return true;
    });
    EXPECT_NE(message.find(std::string(kLayer) + ".weight_scale_2"), std::string::npos) << bad << ": " << message;
  }
}

TEST(Nvfp4Loader, LayoutContradictingTheConfigIsAnError) {
  auto keep = [](const std::string&, DType&, std::vector<int64_t>&, std::vector<uint8_t>&) { return true; };
  const std::string message = load_error(keep, [](const fs::path& dir) {
    fs::remove(dir / "hf_quant_config.json");
    nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    config["quantization_config"] = {{"quant_method", "compressed-tensors"}, {"format", "nvfp4-pack-quantized"}};
    std::ofstream(dir / "config.json") << config.dump();
  });
  EXPECT_NE(message.find("compressed-tensors"), std::string::npos) << message;
  EXPECT_NE(message.find("ModelOpt"), std::string::npos) << message;

  const std::string unsupported = load_error(keep, [](const fs::path& dir) {
    fs::remove(dir / "hf_quant_config.json");
    nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    config["quantization_config"] = {{"quant_method", "gptq"}};
    std::ofstream(dir / "config.json") << config.dump();
  });
  EXPECT_NE(unsupported.find("gptq"), std::string::npos) << unsupported;
}

// --- the CLI on the default model ----------------------------------------------------------------------

TEST(Nvfp4Cli, QuantizeThenRunTheDefaultModel) {
  const fs::path default_model = fs::path(UBERLM_SOURCE_DIR) / "models" / "default";
  ASSERT_TRUE(fs::exists(default_model / "config.json")) << default_model;
  ScratchDir scratch("cli");
  const fs::path out = scratch.path() / "default-nvfp4";
  const std::string binary = UBERLM_BINARY;
  const std::string quantize = binary + " quantize --model '" + default_model.string() + "' --out '" + out.string() +
                               "' > '" + (scratch.path() / "quantize.log").string() + "' 2>&1";
  ASSERT_EQ(std::system(quantize.c_str()), 0) << quantize;
  EXPECT_NE(std::system((binary + " quantize --model '" + default_model.string() + "' --out '" + out.string() +
                         "' > /dev/null 2>&1").c_str()), 0) << "overwrote without --force";
  const fs::path text = scratch.path() / "run.txt";
  const std::string run = binary + " run --model '" + out.string() +
                          "' --prompt 'Q: Tom has 3 apples and buys 4 more. How many apples?\nA:' --max-tokens 8 > '" +
                          text.string() + "' 2>&1";
  ASSERT_EQ(std::system(run.c_str()), 0) << run;
  std::stringstream output;
  output << std::ifstream(text).rdbuf();
  EXPECT_FALSE(output.str().empty());
  auto model = Model::load(out);
  expect_nvfp4_layers(*model, false);
}

}  // namespace
}  // namespace uberlm
