#include "runtime/cuda_backend.h"

#ifdef UBERLM_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/attention_prefill.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused/decode_phases.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "ops/cuda/sampling.h"
#include "ops/cuda/device_buffer.h"
#include "runtime/cuda/cache_snapshot.h"
#include "runtime/cuda/decoder.h"
#include "runtime/cuda/device_memory.h"
#include "runtime/cuda/gemv_tuning_table.h"
#include "runtime/nccl_communicator.h"
#include "runtime/sampler.h"
#endif

namespace uberlm {

bool cuda_device_present() {
#ifdef UBERLM_WITH_CUDA
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
#else
  return false;
#endif
}

#ifdef UBERLM_WITH_CUDA

namespace {

bool strict_from_environment() {
  const char* strict = std::getenv("UBERLM_STRICT");
  return strict && std::string(strict) == "1";
}

// A prompt kernel this model's shape lacks, so a slower one runs: logged once at load, an error with --strict.
void report_slower_path(bool strict, const std::string& message) {
  if (strict) fail("strict: {}", message);
  spdlog::warn("{}", message);
}

// The options' table file, else this GPU's at the default place; null when there is none (logged, or an
// Error in strict mode).
std::unique_ptr<gpu::GemvTuningTable> load_tuning_table(const CudaBackendOptions& options) {
  if (options.tuning_table == "none") {
    if (options.strict) fail("strict: --tuning-table none leaves every GEMV on its built-in tuning");
    return nullptr;
  }
  const gpu::GpuIdentity gpu = gpu::GpuIdentity::current();
  const std::optional<std::filesystem::path> found =
      options.tuning_table.empty() ? gpu::find_tuning_table(gpu) : std::filesystem::path(options.tuning_table);
  if (!found) {
    const std::string where = gpu::default_tuning_table_path(gpu).string();
    if (options.strict) fail("strict: no GEMV tuning table for {} at {} (run `uberlm tune`)", gpu.name, where);
    spdlog::warn("cuda backend: no GEMV tuning table for {} at {} or among the shipped ones: built-in tunings "
                 "(`uberlm tune` makes one)", gpu.name, where);
    return nullptr;
  }
  const std::filesystem::path path = *found;
  auto table = std::make_unique<gpu::GemvTuningTable>(gpu::GemvTuningTable::load(path));
  if (table->gpu.name != gpu.name || table->gpu.sm_count != gpu.sm_count) {
    const std::string message = fmt::format("the GEMV tuning table {} is for {} ({} SMs), this GPU is {} ({} SMs)",
                                            path.string(), table->gpu.name, table->gpu.sm_count, gpu.name, gpu.sm_count);
    if (options.strict) fail("strict: {}", message);
    spdlog::warn("cuda backend: {}: built-in tunings", message);
    return nullptr;
  }
  spdlog::info("cuda backend: GEMV tuning table {} ({} cells, {})", path.string(), table->cells.size(), table->date);
  return table;
}

}  // namespace

struct CudaBackend::Impl {
  ModelConfig config;
  CudaBackendOptions options;
  gpu::StepLimits limits;
  cudaStream_t stream = nullptr;
  std::unique_ptr<gpu::GemvTuningTable> tuning_table;  // null: none for this GPU
  std::unique_ptr<gpu::LinearRunner> linears;
  std::unique_ptr<gpu::DeviceMemory> memory;
  std::unique_ptr<gpu::OpProfiler> profiler;
  std::unique_ptr<gpu::StepGraphs> graphs;
  bool graphs_enabled = true;
  cuda::PrefillAttentionKernel prefill_attention_kernel = cuda::PrefillAttentionKernel::MmaSync;
  mutable gpu::DecoderCounters decoder_counters;
  // `uberlm check`: where an observed forward's decoder copies the residual stream (null otherwise).
  std::unique_ptr<DeviceBuffer> snapshot_buffer;
  float* residual_snapshots = nullptr;
  gpu::FusedDecode fused_decode = gpu::FusedDecode::Off;

  Impl(const ModelConfig& model_config, const CudaBackendOptions& backend_options,
       const std::vector<gpu::LinearFormat>& formats);
  ~Impl();
  gpu::GpuDecoder decoder() const {
    return {config,   memory->model,    memory->caches,       memory->buffers, limits,
            *linears, *profiler,        decoder_counters,     options.communicator,
            stream,   residual_snapshots, options.deterministic, prefill_attention_kernel, fused_decode};
  }
  void plan_small_m_gemm();
  // Settles fused_decode from options.decode_path and what the fused launches can run.
  void choose_decode_path();
  // Writes the batch's metadata (its logits rows row_offset .. row_offset + row_limit) and queues its copy.
  gpu::StepShape prepare(const ForwardBatch& batch, int64_t row_offset, int64_t row_limit);
  void check_chunk(const SequenceChunk& chunk, std::vector<bool>& seen) const;
  // shortest/longest of lengths 0..index, given the one of `index`.
  static void add_length(int64_t index, int64_t length, int64_t& shortest, int64_t& longest);
  // The chunk's tokens up to its prefix save, and when that is inside the run the part after it, into the
  // step's metadata (StepShape::mid_run_saves); `first` is the chunk's first row.
  void place_mid_run_save(const SequenceChunk& chunk, int64_t first, gpu::StepShape& step) const;
  void save_prefixes_at_run_ends(const ForwardBatch& batch);
  void check_slot(const char* caller, int slot) const;
  void check_prefix_snapshot(const char* caller, int snapshot) const;
  // The decoder over the prepared step, through the batch size's graph when it is a decode step.
  void run(const gpu::StepShape& step, bool decode_only);
  // Logits of rows beyond the first piece: the final norm and lm_head again over the next rows.
  void logits_piece(const ForwardBatch& batch, int64_t row0);
};

CudaBackend::Impl::Impl(const ModelConfig& model_config, const CudaBackendOptions& backend_options,
                        const std::vector<gpu::LinearFormat>& formats)
    : config(model_config), options(backend_options) {
  options.strict = options.strict || strict_from_environment();
  if (options.deterministic && options.communicator && options.communicator->size() > 2) {
    fail("--deterministic: with {} tensor-parallel ranks NCCL's all-reduce adds each element in an order its "
         "message size picks, so a row's bits would depend on the batch; use 1 or 2 ranks",
         options.communicator->size());
  }
  if (config.head_dim > cuda::kAttentionMaxHeadDim) {
    fail("CudaBackend: head_dim {} exceeds the attention kernel's {}", config.head_dim, cuda::kAttentionMaxHeadDim);
  }
  // Deterministic mode runs the decode kernels for prompts by choice, so these are not fallbacks there.
  if (!options.deterministic && !cuda::attention_prefill_supports(config.head_dim)) {
    report_slower_path(options.strict, fmt::format("prefill attention: no tensor-core kernel for head_dim {}; prompt "
                                                   "rows run the decode kernel", config.head_dim));
  }
  prefill_attention_kernel = cuda::prefill_attention_kernel_for(config.head_dim);
  spdlog::info("cuda backend: prefill attention on {}", cuda::prefill_attention_kernel_name(prefill_attention_kernel));
  if (!options.deterministic && config.num_layers_of(LayerKind::GatedDeltaNet) > 0 &&
      !cuda::gated_delta_net_chunked_supports(gpu::delta_net_dims(config))) {
    report_slower_path(options.strict,
                       fmt::format("Gated DeltaNet prefill: no chunked kernel for key/value head dims {}/{} (at most "
                                   "{}); prompt rows run the delta rule token by token",
                                   config.delta_net_key_head_dim, config.delta_net_value_head_dim,
                                   cuda::kMaxChunkedDeltaRuleHeadDim));
  }
  limits = {options.max_batch_tokens, options.max_logit_rows, options.max_slots, options.max_context};
  graphs_enabled = options.cuda_graphs;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const bool large_m =
      !options.deterministic && std::max(options.max_batch_tokens, options.max_logit_rows) > cuda::kGemvMaxM;
  if (options.deterministic) {
    spdlog::info("deterministic: every row runs the decode kernels (batch-invariant GEMV tunings, split attention, "
                 "the delta rule token by token); prompts prefill at their speed");
  }
  const bool nvfp4_layers =
      std::any_of(formats.begin(), formats.end(), [](const gpu::LinearFormat& f) { return f.nvfp4; });
  const bool small_m_gemm =
      options.small_m_gemm && !options.deterministic && nvfp4_layers &&
      std::max(options.max_batch_tokens, options.max_logit_rows) >= gpu::kSmallMGemmMinRows &&
      cuda::gemm_nvfp4_wgmma_device_runs();
  tuning_table = load_tuning_table(options);
  linears = std::make_unique<gpu::LinearRunner>(stream, large_m, tuning_table.get(), options.strict,
                                                options.deterministic);
  const int ranks = options.communicator ? options.communicator->size() : 1;
  gpu::MemoryPlanRequest request;
  request.formats = formats;
  request.lm_head_rows = (config.vocab_size + ranks - 1) / ranks;
  request.gathering_ranks = options.communicator ? ranks : 0;
  request.limits = limits;
  request.large_m = large_m;
  request.small_m_gemm = small_m_gemm;
  request.context_fits_pool = options.context_fits_pool;
  request.num_kv_blocks = options.num_kv_blocks;
  request.gpu_memory_utilization = options.gpu_memory_utilization;
  request.prefix_snapshots = options.prefix_snapshots;
  memory = std::make_unique<gpu::DeviceMemory>(config, request);
  limits.max_context = options.max_context = memory->max_context();
  linears->set_gemm_memory(memory->gemm_scratch, memory->gemm_scratch_elements, memory->gemm_workspace);
  if (small_m_gemm) plan_small_m_gemm();
  profiler = std::make_unique<gpu::OpProfiler>(stream);
  graphs = std::make_unique<gpu::StepGraphs>(stream);
  choose_decode_path();  // after the profiler: it builds the decoder (decoder()) to check the fused phases
}

// The wgmma GEMM for the layers placed with tiles. Layers whose sizes are not multiples of 64 (Qwen3.5's
// per-head b and a projections) keep the GEMV, their kernel by design at every M: logged, not a fallback.
void CudaBackend::Impl::plan_small_m_gemm() {
  linears->set_small_m_gemm(memory->small_m_gemm_workspace);
  int with_tiles = 0;
  std::vector<std::string> without;
  for (const gpu::DeviceLinear* w : all_linear_layers(memory->model, config)) {
    if (w->wgmma_tiles) ++with_tiles;
    else if (w->nvfp4) without.push_back(fmt::format("{} [{}, {}]", w->name, w->out, w->in_padded));
  }
  spdlog::info("cuda backend: {} NVFP4 layers take the wgmma GEMM at {}..{} rows{}", with_tiles,
               gpu::kSmallMGemmMinRows, cuda::kGemmWgmmaMaxM,
               without.empty() ? std::string()
                               : fmt::format("; {} with sizes not multiples of 64 keep the GEMV (first: {})",
                                             without.size(), without.front()));
}

void CudaBackend::Impl::choose_decode_path() {
  if (options.decode_path == DecodePath::Unfused) return;
  const std::string unsupported = gpu::fused_decode_unsupported(decoder());
  if (unsupported.empty()) {
    fused_decode = gpu::FusedDecode::On;
    spdlog::info("cuda backend: decode steps of 1..{} sequences run each decoder layer as one fused launch",
                 cuda::kFusedDecodeMaxTokens);
    return;
  }
  const std::string message = fmt::format("--decode-path: the fused decode launches need {}", unsupported);
  if (options.decode_path == DecodePath::Fused) fail("{}", message);
  report_slower_path(options.strict, message + "; decode steps run unfused");
  fused_decode = gpu::FusedDecode::Unsupported;
}

CudaBackend::Impl::~Impl() {
  graphs.reset();
  profiler.reset();
  linears.reset();  // the cuBLAS handle before the stream it is bound to
  memory.reset();
  if (stream) cudaStreamDestroy(stream);
}

void CudaBackend::Impl::check_chunk(const SequenceChunk& chunk, std::vector<bool>& seen) const {
  check_slot("forward", chunk.slot);
  check_prefix_save(chunk, memory->caches.prefix_snapshots, "CudaBackend::forward");
  if (seen[chunk.slot]) fail("CudaBackend::forward: slot {} appears twice in one batch", chunk.slot);
  seen[chunk.slot] = true;
  const int64_t end = chunk.start + chunk.num_tokens;
  if (chunk.start < 0 || chunk.num_tokens < 0 || end > options.max_context) {
    fail("CudaBackend::forward: slot {} runs positions {}..{}, max_context is {}", chunk.slot, chunk.start, end,
         options.max_context);
  }
  const int64_t needed = (end + kKvBlockSize - 1) / kKvBlockSize;
  const int64_t given = static_cast<int64_t>(chunk.block_table.size());
  if (given < needed || given > limits.max_blocks_per_slot()) {
    fail("CudaBackend::forward: slot {} reaches {} tokens and needs {} KV blocks, its block table has {} (at most {})",
         chunk.slot, end, needed, given, limits.max_blocks_per_slot());
  }
  for (int64_t b = 0; b < given; ++b) {
    if (chunk.block_table[b] < 0 || chunk.block_table[b] >= memory->caches.num_kv_blocks) {
      fail("CudaBackend::forward: slot {} block table entry {} is block {}, the pool has {}", chunk.slot, b,
           chunk.block_table[b], memory->caches.num_kv_blocks);
    }
  }
}

void CudaBackend::Impl::add_length(int64_t index, int64_t length, int64_t& shortest, int64_t& longest) {
  shortest = index == 0 ? length : std::min(shortest, length);
  longest = std::max(longest, length);
}

void CudaBackend::Impl::place_mid_run_save(const SequenceChunk& chunk, int64_t first, gpu::StepShape& step) const {
  const gpu::StepMetadata& host = memory->host_meta;
  const bool mid_run = chunk.prefix_save_snapshot >= 0 && chunk.prefix_save_after < chunk.num_tokens;
  const int64_t to_save = mid_run ? chunk.prefix_save_after : chunk.num_tokens;
  host.chunk_length_to_save[step.chunks] = static_cast<int32_t>(to_save);
  add_length(step.chunks, to_save, step.lengths_to_save.shortest, step.lengths_to_save.longest);
  if (!mid_run) return;
  const int64_t r = static_cast<int64_t>(step.mid_run_saves.size());
  host.resume_first[r] = static_cast<int32_t>(first + to_save);
  host.resume_length[r] = static_cast<int32_t>(chunk.num_tokens - to_save);
  host.resume_slot[r] = chunk.slot;
  host.resume_start[r] = static_cast<int32_t>(chunk.start + to_save);
  add_length(r, chunk.num_tokens - to_save, step.resumed_lengths.shortest, step.resumed_lengths.longest);
  step.mid_run_saves.push_back({chunk.slot, chunk.prefix_save_snapshot});
}

void CudaBackend::Impl::check_slot(const char* caller, int slot) const {
  if (slot < 0 || slot >= options.max_slots) fail("CudaBackend::{}: invalid slot {}", caller, slot);
}

void CudaBackend::Impl::check_prefix_snapshot(const char* caller, int snapshot) const {
  if (snapshot < 0 || snapshot >= memory->caches.prefix_snapshots) {
    fail("CudaBackend::{}: invalid prefix snapshot {} (the backend keeps {})", caller, snapshot,
         memory->caches.prefix_snapshots);
  }
}

gpu::StepShape CudaBackend::Impl::prepare(const ForwardBatch& batch, int64_t row_offset, int64_t row_limit) {
  gpu::StepShape step;
  step.tokens = static_cast<int64_t>(batch.tokens.size());
  if (step.tokens > limits.max_tokens) {
    fail("CudaBackend::forward: {} tokens exceed max_batch_tokens {} planned at load", step.tokens, limits.max_tokens);
  }
  const gpu::StepMetadata& host = memory->host_meta;
  std::vector<bool> seen(options.max_slots, false);
  int64_t offset = 0, row_index = 0;
  for (const SequenceChunk& chunk : batch.chunks) {
    check_chunk(chunk, seen);
    if (chunk.num_tokens == 0) continue;
    std::copy(chunk.block_table.begin(), chunk.block_table.end(),
              host.block_tables + static_cast<int64_t>(chunk.slot) * limits.max_blocks_per_slot());
    for (int64_t i = 0; i < chunk.num_tokens; ++i) {
      const int32_t token = batch.tokens.at(offset + i);
      if (token < 0 || token >= config.vocab_size) fail("CudaBackend::forward: token id {} outside the vocabulary", token);
      host.tokens[offset + i] = token;
      host.positions[offset + i] = static_cast<int32_t>(chunk.start + i);
      host.slots[offset + i] = chunk.slot;
    }
    host.chunk_first[step.chunks] = static_cast<int32_t>(offset);
    host.chunk_length[step.chunks] = static_cast<int32_t>(chunk.num_tokens);
    host.chunk_slot[step.chunks] = chunk.slot;
    host.chunk_start[step.chunks] = static_cast<int32_t>(chunk.start);
    add_length(step.chunks, chunk.num_tokens, step.shortest_chunk, step.longest_chunk);
    place_mid_run_save(chunk, offset, step);
    ++step.chunks;
    const int64_t end = offset + chunk.num_tokens;
    for (int64_t t = end - chunk.logit_rows(); t < end; ++t, ++row_index) {
      if (row_index >= row_offset && row_index < row_offset + row_limit) host.logit_rows[step.rows++] = static_cast<int32_t>(t);
    }
    offset = end;
  }
  if (offset != step.tokens) fail("CudaBackend::forward: chunks cover {} tokens, batch has {}", offset, step.tokens);
  CUDA_CHECK(cudaMemcpyAsync(memory->buffers.meta.tokens, memory->meta_host,
                             gpu::StepMetadata::count(limits) * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  return step;
}

void CudaBackend::Impl::run(const gpu::StepShape& step, bool decode_only) {
  const bool use_graph = graphs_enabled && !profiler->enabled() && decode_only && step.tokens > 0 &&
                         step.rows == step.tokens;
  const gpu::GpuDecoder d = decoder();
  // An observed step's graph has the snapshot copies in it: a graph of its own.
  const int64_t graph_key = 2 * step.tokens + (residual_snapshots ? 1 : 0);
  graphs->run(use_graph, graph_key, [&] { gpu::decoder_step(d, step); });
}

// After the step, outside its graph: a replayed graph must not repeat one step's saves.
void CudaBackend::Impl::save_prefixes_at_run_ends(const ForwardBatch& batch) {
  for (const SequenceChunk& chunk : batch.chunks) {
    if (chunk.prefix_save_snapshot < 0 || chunk.prefix_save_after != chunk.num_tokens) continue;
    gpu::save_prefix_states(config, memory->caches, chunk.slot, chunk.prefix_save_snapshot, stream);
  }
}

void CudaBackend::Impl::logits_piece(const ForwardBatch& batch, int64_t row0) {
  const gpu::StepShape piece = prepare(batch, row0, limits.max_logit_rows);
  gpu::logits(decoder(), piece.rows);
}

CudaBackend::CudaBackend(const Model& model, const CudaBackendOptions& options)
    : CudaBackend(model.config, model.weights, options) {}

CudaBackend::CudaBackend(const ModelConfig& config, const ModelWeights& weights, const CudaBackendOptions& options)
    : impl_(std::make_unique<Impl>(config, options, gpu::linear_formats_of(weights, config))) {
  gpu::upload_device_model(config, weights, impl_->memory->model);
  gpu::pack_wgmma_tiles(config, impl_->stream, impl_->memory->model);
  spdlog::info("cuda backend: {}", memory_summary());
}

CudaBackend::CudaBackend(const ModelConfig& config, SyntheticFormat format, const CudaBackendOptions& options,
                         uint64_t seed)
    : impl_(std::make_unique<Impl>(config, options,
                                   gpu::synthetic_linear_formats(config, {format == SyntheticFormat::Nvfp4, false}))) {
  gpu::fill_device_model_random(config, seed, impl_->stream, impl_->memory->model);
  gpu::pack_wgmma_tiles(config, impl_->stream, impl_->memory->model);
}

CudaBackend::~CudaBackend() = default;

const ModelConfig& CudaBackend::config() const { return impl_->config; }
int CudaBackend::max_slots() const { return impl_->options.max_slots; }

std::optional<KvBlockPool> CudaBackend::kv_block_pool() const {
  return KvBlockPool{impl_->memory->caches.num_kv_blocks};
}

int64_t CudaBackend::max_context() const { return impl_->options.max_context; }

ForwardResult CudaBackend::forward(const ForwardBatch& batch) {
  Impl& d = *impl_;
  ForwardResult result;
  result.rows = batch.logit_rows();
  bool decode_only = !batch.chunks.empty();
  for (const SequenceChunk& chunk : batch.chunks) {
    decode_only = decode_only && chunk.num_tokens == 1 && chunk.logits != LogitRows::None;
  }
  const gpu::StepShape step = d.prepare(batch, 0, d.limits.max_logit_rows);
  d.run(step, decode_only);
  const bool fused_step = gpu::fused_decode_step(d.decoder(), step);
  result.fused_kernels = fused_step && d.fused_decode == gpu::FusedDecode::On;
  result.fused_fallback = fused_step && d.fused_decode == gpu::FusedDecode::Unsupported;
  d.save_prefixes_at_run_ends(batch);
  const int64_t vocab = d.config.vocab_size;
  const gpu::StepBuffers& buffers = d.memory->buffers;
  if (batch.argmax_only && result.rows <= d.limits.max_logit_rows) {
    result.argmax.resize(result.rows);
    if (result.rows > 0) {
      CUDA_CHECK(cuda::launch_argmax(buffers.logits, result.rows, vocab, buffers.argmax_scratch, buffers.argmax, d.stream));
      CUDA_CHECK(cudaMemcpyAsync(result.argmax.data(), buffers.argmax, result.rows * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, d.stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(d.stream));
  } else {
    // Logits rows beyond the buffer's come in pieces: the final norm and lm_head again per piece.
    result.logits.resize(result.rows * vocab);
    for (int64_t row0 = 0; row0 < result.rows; row0 += d.limits.max_logit_rows) {
      if (row0 > 0) d.logits_piece(batch, row0);
      const int64_t rows = std::min(d.limits.max_logit_rows, result.rows - row0);
      CUDA_CHECK(cudaMemcpyAsync(result.logits.data() + row0 * vocab, buffers.logits, rows * vocab * sizeof(float),
                                 cudaMemcpyDeviceToHost, d.stream));
      CUDA_CHECK(cudaStreamSynchronize(d.stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(d.stream));
    if (batch.argmax_only) result.argmax = argmax_rows(result.logits, result.rows, static_cast<int>(vocab));
  }
  if (d.profiler->enabled()) d.profiler->collect();
  return result;
}

int CudaBackend::max_prefix_snapshots() const { return impl_->memory->caches.prefix_snapshots; }

void CudaBackend::restore_prefix(int snapshot, int slot) {
  impl_->check_prefix_snapshot("restore_prefix", snapshot);
  impl_->check_slot("restore_prefix", slot);
  gpu::restore_prefix_states(impl_->config, impl_->memory->caches, snapshot, slot, impl_->stream);
}

// A snapshot's memory is planned at load and kept: the id's next save overwrites it.
void CudaBackend::drop_prefix(int snapshot) { impl_->check_prefix_snapshot("drop_prefix", snapshot); }

ForwardResult CudaBackend::forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) {
  Impl& d = *impl_;
  if (batch.chunks.empty()) fail("CudaBackend::forward_observed: an empty batch");
  const int64_t residual = static_cast<int64_t>(batch.tokens.size()) * d.config.hidden_size;
  const size_t bytes = static_cast<size_t>(2 * d.config.num_layers * residual) * sizeof(float);
  if (!d.snapshot_buffer || d.snapshot_buffer->bytes() < bytes) {
    d.snapshot_buffer = std::make_unique<DeviceBuffer>(bytes);
    d.graphs = std::make_unique<gpu::StepGraphs>(d.stream);  // graphs captured with the old buffer's address
  }
  d.residual_snapshots = d.snapshot_buffer->as<float>();
  ForwardResult result;
  try {
    result = forward(batch);
  } catch (...) {
    d.residual_snapshots = nullptr;
    throw;
  }
  d.residual_snapshots = nullptr;
  const std::vector<float> residuals = d.snapshot_buffer->download<float>();
  snapshot.layers.assign(d.config.num_layers, LayerSnapshot{});
  for (int layer = 0; layer < d.config.num_layers; ++layer) {
    const auto at = residuals.begin() + 2 * layer * residual;
    snapshot.layers[layer].after_mixer.assign(at, at + residual);
    snapshot.layers[layer].after_mlp.assign(at + residual, at + 2 * residual);
  }
  gpu::read_cache_snapshot(d.config, d.memory->caches, batch.chunks.front(), d.stream, snapshot);
  return result;
}

void CudaBackend::set_cuda_graphs(bool enabled) { impl_->graphs_enabled = enabled; }
void CudaBackend::set_profiling(bool enabled) { impl_->profiler->set_enabled(enabled); }
std::vector<KernelTime> CudaBackend::take_profile() { return impl_->profiler->take(); }

int64_t CudaBackend::weight_bytes() const {
  int64_t bytes = 0;
  for (const gpu::DeviceLinear* w : all_linear_layers(impl_->memory->model, impl_->config)) bytes += w->bytes();
  return bytes;
}

int64_t CudaBackend::cache_bytes_per_token(int64_t context) const {
  const ModelConfig& c = impl_->config;
  const int64_t kv = 2 * context * c.num_kv_heads * c.head_dim * 2;  // keys and values, bf16
  const int64_t conv = static_cast<int64_t>(c.delta_net_conv_dim()) * c.delta_net_conv_kernel * 4;  // kernel - 1 read, one written
  const int64_t state =
      static_cast<int64_t>(c.delta_net_num_value_heads) * c.delta_net_key_head_dim * c.delta_net_value_head_dim * 4;
  return c.num_layers_of(LayerKind::FullAttention) * kv + c.num_layers_of(LayerKind::GatedDeltaNet) * (conv + 2 * state);
}

GpuBackend::Counters CudaBackend::counters() const {
  const gpu::LinearCounters& linear = impl_->linears->counters();
  return {linear.gemv_linear_calls,         linear.gemm_bf16_linear_calls, linear.gemm_nvfp4_linear_calls,
          linear.gemm_nvfp4_prefetched_calls, linear.gemv_swiglu_calls,      linear.wgmma_linear_calls,
          linear.tuning_table_hits,
          linear.tuning_table_misses,
          impl_->decoder_counters.prefill_attention_calls, impl_->decoder_counters.prefill_attention_wgmma_calls,
          impl_->decoder_counters.prefill_attention_fallbacks,
          impl_->decoder_counters.chunked_delta_rule_calls, impl_->decoder_counters.chunked_delta_rule_fallbacks,
          impl_->decoder_counters.fused_decode_layers, impl_->decoder_counters.fused_decode_fallbacks,
          impl_->graphs->captures(), impl_->graphs->replays()};
}

std::string CudaBackend::memory_summary() const { return impl_->memory->summary(); }

std::vector<gpu::GemvCell> CudaBackend::gemv_cells() const {
  const std::set<gpu::GemvCell>& seen = impl_->linears->cells_seen();
  return {seen.begin(), seen.end()};
}

std::vector<gpu::WgmmaCell> CudaBackend::wgmma_cells() const {
  const std::set<gpu::WgmmaCell>& seen = impl_->linears->wgmma_cells_seen();
  return {seen.begin(), seen.end()};
}

#endif  // UBERLM_WITH_CUDA

}  // namespace uberlm
