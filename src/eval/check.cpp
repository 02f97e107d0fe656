#include "eval/check.h"

#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "runtime/cpu_backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/sampler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

namespace {

// A layer's snapshot tensors in the order the layer computes them.
std::vector<std::pair<std::string, const std::vector<float>*>> tensors_of(const LayerSnapshot& s) {
  return {{"after_mixer", &s.after_mixer}, {"keys", &s.keys},       {"values", &s.values},
          {"conv_state", &s.conv_state},   {"recurrent_state", &s.recurrent_state}, {"after_mlp", &s.after_mlp}};
}

struct Comparison {
  double error = 0;
  int64_t index = 0;
};

// max|a - b| / max|b|, infinite when a has a non-finite value or the sizes differ.
Comparison compare(const std::vector<float>& candidate, const std::vector<float>& reference) {
  if (candidate.size() != reference.size()) return {INFINITY, 0};
  double worst = 0, scale = 0;
  int64_t at = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    if (!std::isfinite(candidate[i])) return {INFINITY, static_cast<int64_t>(i)};
    scale = std::max(scale, std::fabs(static_cast<double>(reference[i])));
    const double difference = std::fabs(static_cast<double>(candidate[i]) - reference[i]);
    if (difference > worst) {
      worst = difference;
      at = static_cast<int64_t>(i);
    }
  }
  return {scale > 0 ? worst / scale : worst, at};
}

void write_layer(const std::filesystem::path& path, const LayerSnapshot& candidate, const LayerSnapshot& reference,
                 const Divergence& divergence) {
  std::vector<SafetensorsWriteEntry> entries;
  for (const auto& [side, snapshot] : {std::pair{"candidate", &candidate}, std::pair{"reference", &reference}}) {
    for (const auto& [name, values] : tensors_of(*snapshot)) {
      if (values->empty()) continue;
      entries.push_back({std::string(side) + "." + name, DType::F32, {static_cast<int64_t>(values->size())},
                         values->data()});
    }
  }
  write_safetensors(path, entries,
                    {{"step", std::to_string(divergence.step)}, {"layer", std::to_string(divergence.layer)},
                     {"tensor", divergence.tensor}, {"index", std::to_string(divergence.index)},
                     {"error", std::to_string(divergence.error)}});
}

// One sequence in slot 0: each run continues it, with a block table covering its positions.
class CheckedSequence {
 public:
  explicit CheckedSequence(int64_t blocks) {
    for (int64_t b = 0; b < blocks; ++b) table_.push_back(static_cast<int32_t>(b));
  }
  ForwardBatch next(std::vector<int32_t> tokens) {
    const int64_t count = static_cast<int64_t>(tokens.size());
    ForwardBatch batch{std::move(tokens), {SequenceChunk{.slot = 0, .start = length_, .num_tokens = count,
                                                         .logits = LogitRows::Last, .block_table = table_}}};
    length_ += count;
    return batch;
  }

 private:
  std::vector<int32_t> table_;
  int64_t length_ = 0;
};

}  // namespace

nlohmann::json CheckReport::to_json() const {
  nlohmann::json out = {{"clean", !divergence.has_value()}, {"steps_checked", steps_checked},
                        {"tensors_compared", tensors_compared}, {"worst_error", worst_error}};
  if (divergence) {
    out["divergence"] = {{"step", divergence->step},     {"layer", divergence->layer},
                         {"tensor", divergence->tensor}, {"index", divergence->index},
                         {"error", divergence->error},   {"candidate", divergence->candidate},
                         {"reference", divergence->reference}};
  }
  return out;
}

CheckReport run_check(Backend& candidate, Backend& reference, const CheckOptions& options) {
  if (options.prompt.empty()) fail("check: the prompt is empty");
  const int64_t positions = static_cast<int64_t>(options.prompt.size()) + options.decode_steps;
  const int64_t blocks = (positions + kKvBlockSize - 1) / kKvBlockSize;
  if (const std::optional<KvBlockPool> pool = candidate.kv_block_pool(); pool && pool->num_blocks < blocks) {
    fail("check: {} positions need {} KV blocks, the candidate's pool has {}", positions, blocks, pool->num_blocks);
  }
  CheckedSequence candidate_sequence(blocks), reference_sequence(blocks);
  const int vocab = reference.config().vocab_size;
  CheckReport report;
  std::vector<int32_t> tokens = options.prompt;
  for (int step = 0; step <= options.decode_steps; ++step) {
    ForwardSnapshot got, expected;
    candidate.forward_observed(candidate_sequence.next(tokens), got);
    const ForwardResult ref = reference.forward_observed(reference_sequence.next(tokens), expected);
    for (size_t layer = 0; layer < expected.layers.size(); ++layer) {
      const auto candidate_tensors = tensors_of(got.layers.at(layer));
      const auto reference_tensors = tensors_of(expected.layers[layer]);
      for (size_t t = 0; t < reference_tensors.size(); ++t) {
        const std::vector<float>& ref_values = *reference_tensors[t].second;
        if (ref_values.empty()) continue;
        const Comparison c = compare(*candidate_tensors[t].second, ref_values);
        ++report.tensors_compared;
        report.worst_error = std::max(report.worst_error, c.error);
        if (c.error <= options.tolerance) continue;
        const std::vector<float>& got_values = *candidate_tensors[t].second;
        report.divergence = Divergence{step, static_cast<int>(layer), reference_tensors[t].first, c.index, c.error,
                                       c.index < static_cast<int64_t>(got_values.size()) ? got_values[c.index] : NAN,
                                       ref_values[c.index]};
        report.steps_checked = step + 1;
        if (!options.divergence_file.empty()) {
          write_layer(options.divergence_file, got.layers[layer], expected.layers[layer], *report.divergence);
        }
        return report;
      }
    }
    report.steps_checked = step + 1;
    tokens = {argmax(ref.logits.data(), vocab)};
  }
  return report;
}

#ifdef UBERLM_WITH_CUDA
namespace {

constexpr uint64_t kSyntheticSeed = 20260101;

CudaBackendOptions check_backend_options(int64_t positions, int64_t prompt_tokens, const std::string& tuning_table) {
  CudaBackendOptions options;
  options.max_slots = 1;
  options.max_context = positions;
  options.max_batch_tokens = prompt_tokens;
  options.max_logit_rows = 64;
  options.tuning_table = tuning_table;
  return options;
}

}  // namespace

nlohmann::json run_check_command(const CheckCommand& command) {
  if (!cuda_device_present()) fail("check: the candidate is the CUDA backend, and no CUDA device is visible");
  if (command.reference != "cpu" && command.reference != "cuda-eager") {
    fail("check: --reference {}: cpu or cuda-eager", command.reference);
  }
  std::unique_ptr<Model> model;
  std::vector<int32_t> prompt;
  ModelConfig config = command.shape;
  if (!command.model.empty()) {
    model = Model::load(command.model);
    config = model->config;
    const auto tokenizer = BpeTokenizer::load(std::filesystem::path(command.model) / "tokenizer.json");
    for (int id : tokenizer->encode(command.prompt)) prompt.push_back(id);
  } else {
    if (command.reference == "cpu") fail("check --shape: random weights live on the GPU; use --reference cuda-eager");
    for (size_t i = 0; i < command.prompt.size(); ++i) {
      prompt.push_back(static_cast<int32_t>((static_cast<unsigned char>(command.prompt[i]) * 7919 + i * 104729) %
                                            config.vocab_size));
    }
  }
  const int64_t positions = static_cast<int64_t>(prompt.size()) + command.steps + 1;
  CudaBackendOptions options = check_backend_options(positions, static_cast<int64_t>(prompt.size()),
                                                     command.tuning_table);
  const SyntheticFormat format = command.weights == "bf16" ? SyntheticFormat::Bf16 : SyntheticFormat::Nvfp4;
  auto make_cuda = [&] {
    return model ? std::make_unique<CudaBackend>(*model, options)
                 : std::make_unique<CudaBackend>(config, format, options, kSyntheticSeed);
  };
  options.decode_path = command.decode_path;
  std::unique_ptr<CudaBackend> candidate = make_cuda();
  options.decode_path = DecodePath::Unfused;
  std::unique_ptr<Backend> reference;
  if (command.reference == "cpu") {
    reference = std::make_unique<CpuBackend>(*model, 1);
  } else {
    auto eager = make_cuda();
    eager->set_cuda_graphs(false);
    reference = std::move(eager);
  }
  CheckOptions check;
  check.prompt = prompt;
  check.decode_steps = command.steps;
  const bool exact_reference = command.reference == "cuda-eager" && command.decode_path == DecodePath::Unfused;
  check.tolerance = command.tolerance >= 0 ? command.tolerance : exact_reference ? 0.0 : 3e-2;
  check.divergence_file = command.divergence_file;
  const CheckReport report = run_check(*candidate, *reference, check);
  nlohmann::json out = report.to_json();
  out["candidate"] = fmt::format("cuda (decode steps through their CUDA graphs, decode path {}; fused layers {})",
                                 decode_path_name(command.decode_path), candidate->counters().fused_decode_layers);
  out["reference"] = command.reference;
  out["tolerance"] = check.tolerance;
  out["prompt_tokens"] = prompt.size();
  out["model"] = model ? command.model : command.shape_name;
  if (report.divergence) out["divergence_file"] = command.divergence_file;
  return out;
}
#else
nlohmann::json run_check_command(const CheckCommand&) { fail("check: this binary was built without CUDA"); }
#endif

}  // namespace uberlm
