#include "model/quantize.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/nvfp4.h"
#include "core/progress_bar.h"
#include "core/regular_file.h"
#include "io/safetensors.h"

namespace uberlm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr size_t kWeightSuffixLength = 7;  // ".weight"

bool is_weight_name(const std::string& name) {
  return name.size() > kWeightSuffixLength && name.ends_with(".weight");
}

class Exclusions {
 public:
  explicit Exclusions(const std::vector<std::string>& patterns) {
    for (const std::string& pattern : patterns) {
      try {
        regexes_.emplace_back(pattern, std::regex::ECMAScript);
      } catch (const std::regex_error& error) {
        fail("--exclude '{}' is not a valid regular expression: {}", pattern, error.what());
      }
    }
  }
  bool excludes(const std::string& name) const {
    for (const std::regex& regex : regexes_) {
      if (std::regex_search(name, regex)) return true;
    }
    return false;
  }

 private:
  std::vector<std::regex> regexes_;
};

bool is_float_dtype(DType dtype) { return dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32; }

bool should_quantise(const std::string& name, const SafetensorsEntry& entry, const Exclusions& exclusions) {
  return is_weight_name(name) && entry.shape.size() == 2 &&
         is_float_dtype(entry.dtype) && entry.shape[0] > 0 && entry.shape[1] > 0 &&
         entry.shape[1] % kNvfp4BlockSize == 0 && !exclusions.excludes(name);
}

json read_json(const fs::path& path) {
  require_regular_file(path);
  std::ifstream stream(path, std::ios::binary);
  if (!stream) fail("{}: cannot open", path.string());
  std::stringstream text;
  text << stream.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& error) {
    fail("{}: invalid JSON: {}", path.string(), error.what());
  }
}

void write_json(const fs::path& path, const json& value) {
  std::ofstream stream(path, std::ios::binary);
  stream << value.dump(2) << "\n";
  if (!stream) fail("{}: cannot write", path.string());
}

// The weight files of a checkpoint folder, chosen as Checkpoint::open does: the shards its index names,
// else model.safetensors, else every *.safetensors.
std::vector<std::string> weight_files(const fs::path& dir) {
  std::set<std::string> files;
  if (fs::exists(dir / kIndexFile)) {
    const json index = read_json(dir / kIndexFile);
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      fail("{}: needs a 'weight_map' object", (dir / kIndexFile).string());
    }
    for (const auto& file : index["weight_map"]) files.insert(file.get<std::string>());
  } else if (fs::exists(dir / "model.safetensors")) {
    files.insert("model.safetensors");
  } else {
    for (const auto& item : fs::directory_iterator(dir)) {
      if (item.is_regular_file() && item.path().extension() == ".safetensors") files.insert(item.path().filename());
    }
  }
  if (files.empty()) fail("checkpoint {}: no *.safetensors weight files", dir.string());
  return {files.begin(), files.end()};
}

// Removes the temporary folder unless the write completed.
class TemporaryFolder {
 public:
  explicit TemporaryFolder(fs::path path) : path_(std::move(path)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TemporaryFolder() {
    std::error_code ignored;
    if (!committed_) fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }
  void commit_to(const fs::path& target, bool replace) {
    if (replace) fs::remove_all(target);
    fs::rename(path_, target);
    committed_ = true;
  }

 private:
  fs::path path_;
  bool committed_ = false;
};

// The temporary folder of a run writing `absolute_out`: `.NAME.partial.PID` beside it.
std::string partial_folder_prefix(const fs::path& absolute_out) {
  return fmt::format(".{}.partial.", absolute_out.filename().string());
}

bool process_runs(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

// A run killed outright (SIGKILL, power loss) leaves its partial folder behind. Those whose PID no longer
// runs are removed; one whose PID runs may be another quantize writing now and is left alone.
std::vector<std::string> remove_stale_partial_folders(const fs::path& absolute_out) {
  const std::string prefix = partial_folder_prefix(absolute_out);
  std::vector<std::string> removed;
  for (const auto& item : fs::directory_iterator(absolute_out.parent_path())) {
    const std::string name = item.path().filename();
    if (!item.is_directory() || name.rfind(prefix, 0) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    const bool is_pid = !pid_text.empty() && pid_text.size() <= 9 &&
                        std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!is_pid) continue;
    if (process_runs(static_cast<pid_t>(std::stol(pid_text)))) continue;
    fs::remove_all(item.path());
    removed.push_back(item.path().string());
  }
  return removed;
}

// One shard's output tensors, with the buffers that hold the quantised data.
struct ShardOutput {
  std::vector<SafetensorsWriteEntry> entries;
  std::vector<Nvfp4Tensor> quantised;  // reserved up front: entries point into it
};

}  // namespace

std::vector<std::string> default_nvfp4_exclusions() {
  return {"lm_head", "embed_tokens", "conv1d", "norm", "(^|\\.)visual\\.", "(^|\\.)mtp\\."};
}

QuantizeSummary quantize_checkpoint(const QuantizeOptions& options) {
  const fs::path in = options.model_dir, out = options.out_dir;
  if (!fs::is_directory(in)) fail("quantize: --model {} is not a checkpoint directory", in.string());
  if (out.empty()) fail("quantize: --out is empty");
  if (fs::exists(out) && fs::equivalent(in, out)) fail("quantize: --out {} is the input checkpoint", out.string());
  if (fs::exists(out) && !options.force) {
    fail("quantize: {} exists; pass --force to replace it", out.string());
  }
  const Exclusions exclusions(options.exclude);
  const std::vector<std::string> files = weight_files(in);

  // Open every shard first: bad headers fail before any work, and the tensor count sizes the progress bar.
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  int64_t total_tensors = 0;
  for (const std::string& file : files) {
    shards.push_back(SafetensorsFile::open(in / file));
    total_tensors += static_cast<int64_t>(shards.back()->header().tensors.size());
  }

  const fs::path absolute_out = fs::absolute(out).lexically_normal();
  QuantizeSummary summary;
  summary.removed_stale_folders = remove_stale_partial_folders(absolute_out);
  TemporaryFolder temporary(absolute_out.parent_path() / (partial_folder_prefix(absolute_out) + std::to_string(::getpid())));
  json weight_map = json::object();
  std::vector<std::string> kept_modules;
  ProgressBar progress("quantize", total_tensors);
  for (size_t s = 0; s < shards.size(); ++s) {
    const SafetensorsFile& shard = *shards[s];
    ShardOutput output;
    int quantisable = 0;
    for (const auto& [name, entry] : shard.header().tensors) quantisable += should_quantise(name, entry, exclusions);
    output.quantised.reserve(static_cast<size_t>(quantisable));
    std::vector<float> scale_2_values;
    scale_2_values.reserve(static_cast<size_t>(quantisable));
    for (const auto& [name, entry] : shard.header().tensors) {
      const TensorView view = shard.view(name);
      summary.bytes_in += view.nbytes();
      if (!should_quantise(name, entry, exclusions)) {
        output.entries.push_back({name, entry.dtype, entry.shape, view.data});
        weight_map[name] = files[s];
        summary.bytes_out += view.nbytes();
        ++summary.kept_tensors;
        if (entry.shape.size() == 2 && is_weight_name(name)) {
          kept_modules.push_back(name.substr(0, name.size() - kWeightSuffixLength));
        }
        progress.advance(1, name);
        continue;
      }
      const std::vector<float> values = to_f32(view);
      output.quantised.push_back(quantize_nvfp4(values.data(), entry.shape[0], entry.shape[1], name));
      const Nvfp4Tensor& q = output.quantised.back();
      scale_2_values.push_back(q.global_scale);
      const std::string module = name.substr(0, name.size() - kWeightSuffixLength);
      output.entries.push_back({name, DType::U8, {q.rows, q.cols / 2}, q.packed.data()});
      output.entries.push_back(
          {module + ".weight_scale", DType::F8_E4M3, {q.rows, q.cols / kNvfp4BlockSize}, q.scales.data()});
      output.entries.push_back({module + ".weight_scale_2", DType::F32, {}, &scale_2_values.back()});
      for (const char* suffix : {".weight", ".weight_scale", ".weight_scale_2"}) weight_map[module + suffix] = files[s];
      summary.bytes_out += q.packed.size() + q.scales.size() + sizeof(float);
      ++summary.quantised_tensors;
      progress.advance(1, name);
    }
    write_safetensors(temporary.path() / files[s], output.entries, shard.header().metadata);
  }
  progress.finish();

  // Everything else in the folder (tokenizer, generation_config, chat template, ...) is copied as is.
  for (const auto& item : fs::directory_iterator(in)) {
    const std::string name = item.path().filename();
    if (!item.is_regular_file() || item.path().extension() == ".safetensors" || name == kIndexFile ||
        name == "config.json" || name == "hf_quant_config.json") {
      continue;
    }
    fs::copy_file(item.path(), temporary.path() / name);
  }
  if (fs::exists(in / kIndexFile)) {
    json index = read_json(in / kIndexFile);
    index["metadata"]["total_size"] = summary.bytes_out;
    index["weight_map"] = weight_map;
    write_json(temporary.path() / kIndexFile, index);
  }
  const json quantization = {{"quant_algo", "NVFP4"},
                             {"kv_cache_quant_algo", nullptr},
                             {"group_size", kNvfp4BlockSize},
                             {"exclude_modules", kept_modules}};
  write_json(temporary.path() / "hf_quant_config.json",
             {{"producer", {{"name", "uberlm"}, {"version", "0.1.0"}}}, {"quantization", quantization}});
  json config = read_json(in / "config.json");
  json quantization_config = quantization;
  quantization_config["quant_method"] = "modelopt";
  config["quantization_config"] = quantization_config;
  write_json(temporary.path() / "config.json", config);

  temporary.commit_to(out, options.force);
  return summary;
}

int quantize_model_at_load(Model& model, const std::vector<std::string>& exclude) {
  const Exclusions exclusions(exclude);
  std::vector<LinearWeight*> chosen;
  for (LinearWeight* layer : all_linear_layers(model.weights, model.config)) {
    if (!layer->nvfp4 && layer->in_features() % kNvfp4BlockSize == 0 && !exclusions.excludes(layer->name + ".weight")) {
      chosen.push_back(layer);
    }
  }
  // Reserved so the views taken below stay valid (they point into each tensor's own buffers anyway).
  model.owned_nvfp4.reserve(model.owned_nvfp4.size() + chosen.size());
  ProgressBar progress("quantize nvfp4", static_cast<int64_t>(chosen.size()));
  for (LinearWeight* layer : chosen) {
    const std::vector<float> values = to_f32(layer->weight);
    model.owned_nvfp4.push_back(
        quantize_nvfp4(values.data(), layer->out_features(), layer->in_features(), layer->name + ".weight"));
    layer->nvfp4 = model.owned_nvfp4.back().view();
    layer->weight = TensorView{};
    progress.advance(1, layer->name);
  }
  progress.finish();
  return static_cast<int>(chosen.size());
}

}  // namespace uberlm
