#include "runtime/cuda_backend.h"

#include "runtime/cpu_backend.h"
#include "runtime/cpu_tensor_parallel_backend.h"
#include "runtime/cuda_tensor_parallel_backend.h"
#include "runtime/sampler.h"
#include "core/error.h"

#ifdef UBERLM_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>

#include <spdlog/spdlog.h>

#include "ops/cuda/activation.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/gated_delta_net.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/kv_cache.h"
#include "ops/cuda/random_fill.h"
#include "ops/cuda/rms_norm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/sampling.h"
#include "runtime/nccl_communicator.h"
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

std::unique_ptr<Backend> make_backend(const Model& model, const std::string& device, const CudaBackendOptions& options,
                                      int tensor_parallel) {
  if (device != "cpu" && device != "cuda" && device != "auto") fail("--device {}: expected cpu, cuda or auto", device);
  if (tensor_parallel < 1) fail("--tensor-parallel {}: expected at least 1", tensor_parallel);
  const bool use_cuda = device == "cuda" || (device == "auto" && cuda_device_present());
  if (!use_cuda) {
    if (tensor_parallel > 1) return std::make_unique<CpuTensorParallelBackend>(model, options.max_slots, tensor_parallel);
    return std::make_unique<CpuBackend>(model, options.max_slots);
  }
#ifdef UBERLM_WITH_CUDA
  if (!cuda_device_present()) fail("--device cuda: no CUDA device is visible");
  if (tensor_parallel > 1) return std::make_unique<CudaTensorParallelBackend>(model, tensor_parallel, options);
  return std::make_unique<CudaBackend>(model, options);
#else
  fail("--device cuda: this binary was built without CUDA");
#endif
}

std::unique_ptr<Backend> make_backend(const Model& model, const std::string& device, int max_slots,
                                      int tensor_parallel) {
  CudaBackendOptions options;
  options.max_slots = max_slots;
  options.max_context = std::min<int64_t>(model.config.max_position_embeddings > 0 ? model.config.max_position_embeddings : 4096, 8192);
  return make_backend(model, device, options, tensor_parallel);
}

#ifdef UBERLM_WITH_CUDA

namespace {

constexpr int64_t kKvBlockSize = 16;
constexpr int64_t kAlignment = 256;

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }
int64_t padded_k(int64_t k) { return round_up(k, cuda::kGemvKMultiple); }
double gib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); }

// Bump allocation over one cudaMalloc. A planning arena (base 0) only adds up sizes, so that the same
// layout code first measures and then places every buffer.
class Arena {
 public:
  explicit Arena(uintptr_t base = 0) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    const int64_t offset = used_;
    used_ += round_up(std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T)), kAlignment);
    return reinterpret_cast<T*>(base_ + offset);
  }
  int64_t used() const { return used_; }

 private:
  uintptr_t base_;
  int64_t used_ = 0;
};

// A linear layer on the device: bf16 [out, in_padded] or NVFP4 [out, in_padded], optional fp32 bias.
struct DeviceLinear {
  std::string name;
  int64_t out = 0, in = 0, in_padded = 0;
  bool nvfp4 = false;
  uint16_t* bf16 = nullptr;
  uint8_t* packed = nullptr;
  uint8_t* scales = nullptr;
  float global_scale = 0;
  float* bias = nullptr;

  int64_t bytes() const { return nvfp4 ? out * in_padded / 2 + out * in_padded / 16 : out * in_padded * 2; }
  Nvfp4Weight nvfp4_view() const { return {out, in_padded, packed, scales, global_scale}; }
};

struct DeviceLayer {
  LayerKind kind;
  float *input_norm = nullptr, *post_attention_norm = nullptr;
  DeviceLinear q_proj, k_proj, v_proj, o_proj;
  float *q_norm = nullptr, *k_norm = nullptr;
  uint16_t *key_cache = nullptr, *value_cache = nullptr;  // [blocks, block_size, KV, head_dim]
  DeviceLinear in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj;
  float *conv1d = nullptr, *dt_bias = nullptr, *a_log = nullptr, *delta_norm = nullptr;
  float *conv_state = nullptr;       // [slots, kernel, conv_dim], a ring by position (gated_delta_net.h)
  float *recurrent_state = nullptr;  // [slots, Hv, dk, dv]
  DeviceLinear gate_proj, up_proj, down_proj;
};

// What a linear layer's weights are: whether NVFP4, and whether it has a bias.
struct LinearKind {
  bool nvfp4 = false;
  bool bias = false;
};

}  // namespace

struct CudaBackend::Impl {
  ModelConfig config;
  CudaBackendOptions options;
  cudaStream_t stream = nullptr;
  void* weight_memory = nullptr;
  void* runtime_memory = nullptr;
  int64_t weight_arena_bytes = 0, runtime_arena_bytes = 0, kv_bytes = 0, state_bytes = 0;

  // Weights.
  uint16_t* embed_tokens = nullptr;  // bf16 [V, D]
  float* final_norm = nullptr;
  DeviceLinear lm_head;
  std::vector<DeviceLayer> layers;
  std::vector<float> inv_freq_host;
  float* inv_freq = nullptr;

  // Activations, sized for T = max_batch_tokens and R = max_logit_rows.
  int64_t max_tokens = 0, max_rows = 0, max_blocks_per_slot = 0, num_blocks = 0;
  float* x = nullptr;                // [T, D] residual stream
  uint16_t* h = nullptr;             // [T, D_p] normed input of the next linear layers
  float *proj0 = nullptr, *proj1 = nullptr, *proj2 = nullptr, *proj3 = nullptr;  // linear outputs
  float* core = nullptr;             // [T, H hd] query
  uint16_t *attn_in = nullptr, *delta_in = nullptr, *mlp_in = nullptr;  // bf16 inputs of o_proj, out_proj, down
  float* delta = nullptr;            // [T, D] mixer / MLP output, added to x by the next norm
  float* attention_workspace = nullptr;
  int32_t* conv_ring_readers = nullptr;  // [slots, Hk], zero between Gated DeltaNet launches (all layers share it)
  uint16_t* final_in = nullptr;      // [R, D_p]
  float* logits = nullptr;           // [R, V]
  // Tensor parallelism: lm_head has lm_head_rows = ceil(V / ranks) rows (V without it); its output
  // [R, lm_head_rows] is gathered from every rank into [ranks, R, lm_head_rows], then laid out as logits.
  int64_t lm_head_rows = 0;
  float* shard_logits = nullptr;
  float* gathered_logits = nullptr;
  int32_t* argmax = nullptr;         // [R]
  cuda::ArgmaxScratch* argmax_scratch = nullptr;  // [R], zero between launches
  // Per-forward metadata, one contiguous int32 region mirrored by a pinned host buffer.
  int32_t* meta = nullptr;
  int32_t* meta_host = nullptr;
  int64_t meta_count = 0;
  int32_t *tokens = nullptr, *positions = nullptr, *slots = nullptr;  // [T]
  int32_t *chunk_first = nullptr, *chunk_length = nullptr, *chunk_slot = nullptr, *chunk_start = nullptr;  // [T]
  int32_t* logit_rows = nullptr;     // [R]
  int32_t* block_tables = nullptr;   // [slots, max_blocks_per_slot]
  // The large-M path (only planned when a forward can exceed the GEMV's 64 rows).
  uint16_t* gemm_scratch = nullptr;  // bf16 [largest NVFP4 layer]
  int64_t gemm_scratch_elements = 0;
  uint8_t* gemm_workspace = nullptr;
  std::unique_ptr<cuda::Gemm> gemm;

  // Host-side cache bookkeeping.
  std::vector<int64_t> lengths;
  std::vector<std::vector<int32_t>> slot_blocks;
  std::vector<int32_t> free_blocks;

  // Graphs per decode batch size.
  bool graphs_enabled = true;
  std::map<int64_t, cudaGraphExec_t> decode_graphs;
  Counters counters;

  // Profiling.
  bool profiling = false;
  struct PendingEvent {
    std::string op;
    cudaEvent_t start, stop;
  };
  std::vector<PendingEvent> pending;
  std::map<std::string, KernelTime> profile;

  int64_t rows_of_last_forward = 0;

  ~Impl();
  // Places every weight and runtime buffer in the two arenas (planning when their bases are 0).
  void layout_weights(Arena& arena, const std::vector<LinearKind>& kinds);
  void layout_runtime(Arena& arena);
  void allocate(const std::vector<LinearKind>& kinds);
  std::vector<DeviceLinear*> all_linears();
  void upload(const ModelWeights& weights);
  void fill_random(uint64_t seed);
  void init_common();
  // The KV pool's block count by the options' sizing rule (sets num_blocks while planning).
  int64_t plan_kv_blocks(int64_t weight_bytes, int64_t free_bytes, int64_t total_bytes, int64_t margin);
  // Writes the chunk's block table row, taking blocks from the pool unless the scheduler owns them.
  void assign_blocks(const SequenceChunk& chunk, int64_t start, int32_t* host_tables);

  // Forward pieces.
  struct BatchPlan {
    int64_t tokens = 0, chunks = 0, rows = 0;
    bool decode_only = false;
  };
  BatchPlan prepare(const ForwardBatch& batch, int64_t row_offset, int64_t row_limit);
  void run_kernels(const BatchPlan& plan);
  void run(const BatchPlan& plan);
  void linear(const DeviceLinear& w, const uint16_t* x_bf16, int64_t rows, float* y);
  struct LinearOutput {
    const DeviceLinear* weight;
    float* y;
  };
  void linear_group(std::initializer_list<LinearOutput> outputs, const uint16_t* x_bf16, int64_t rows);
  // After a row-parallel linear layer (o_proj, out_proj, down_proj): the ranks' partial sums of delta.
  void reduce_partial_sums(int64_t tokens);
  // logits [rows, V] from final_in.
  void compute_logits(int64_t rows);
  void attention_layer(const DeviceLayer& layer, int64_t tokens);
  void delta_net_layer(const DeviceLayer& layer, int64_t tokens, int64_t chunks);
  void mlp(const DeviceLayer& layer, int64_t tokens);
  void begin(const char* op);
  void end();
  void collect_profile();
};

CudaBackend::Impl::~Impl() {
  gemm.reset();  // the cuBLAS handle before the stream it is bound to
  for (auto& [size, exec] : decode_graphs) cudaGraphExecDestroy(exec);
  if (meta_host) cudaFreeHost(meta_host);
  if (weight_memory) cudaFree(weight_memory);
  if (runtime_memory) cudaFree(runtime_memory);
  if (stream) cudaStreamDestroy(stream);
}

std::vector<DeviceLinear*> CudaBackend::Impl::all_linears() {
  std::vector<DeviceLinear*> out;
  for (DeviceLayer& layer : layers) {
    if (layer.kind == LayerKind::FullAttention) {
      for (DeviceLinear* l : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj}) out.push_back(l);
    } else {
      for (DeviceLinear* l : {&layer.in_proj_qkv, &layer.in_proj_z, &layer.in_proj_b, &layer.in_proj_a, &layer.out_proj}) {
        out.push_back(l);
      }
    }
    for (DeviceLinear* l : {&layer.gate_proj, &layer.up_proj, &layer.down_proj}) out.push_back(l);
  }
  out.push_back(&lm_head);
  return out;
}

void CudaBackend::Impl::layout_weights(Arena& arena, const std::vector<LinearKind>& kinds) {
  const ModelConfig& c = config;
  const int64_t dim = c.hidden_size;
  size_t next_kind = 0;
  auto place = [&](DeviceLinear& w, const std::string& name, int64_t out, int64_t in) {
    const LinearKind kind = kinds.at(next_kind++);
    w.name = name;
    w.out = out;
    w.in = in;
    w.in_padded = padded_k(in);
    w.nvfp4 = kind.nvfp4;
    if (w.nvfp4) {
      w.packed = arena.take<uint8_t>(out * w.in_padded / 2);
      w.scales = arena.take<uint8_t>(out * w.in_padded / 16);
    } else {
      w.bf16 = arena.take<uint16_t>(out * w.in_padded);
    }
    w.bias = kind.bias ? arena.take<float>(out) : nullptr;
  };
  embed_tokens = arena.take<uint16_t>(static_cast<int64_t>(c.vocab_size) * dim);
  final_norm = arena.take<float>(dim);
  inv_freq = arena.take<float>(std::max(1, c.rotary_dim / 2));
  layers.assign(c.num_layers, DeviceLayer{});
  const int64_t conv_dim = c.linear_conv_dim();
  for (int i = 0; i < c.num_layers; ++i) {
    DeviceLayer& layer = layers[i];
    const std::string prefix = "layers." + std::to_string(i) + ".";
    layer.kind = c.layer_kinds[i];
    layer.input_norm = arena.take<float>(dim);
    layer.post_attention_norm = arena.take<float>(dim);
    if (layer.kind == LayerKind::FullAttention) {
      const int64_t q_width = static_cast<int64_t>(c.num_heads) * c.head_dim;
      const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
      place(layer.q_proj, prefix + "self_attn.q_proj", c.q_proj_rows(), dim);
      place(layer.k_proj, prefix + "self_attn.k_proj", kv_width, dim);
      place(layer.v_proj, prefix + "self_attn.v_proj", kv_width, dim);
      place(layer.o_proj, prefix + "self_attn.o_proj", dim, q_width);
      if (c.qk_norm) {
        layer.q_norm = arena.take<float>(c.head_dim);
        layer.k_norm = arena.take<float>(c.head_dim);
      }
    } else {
      place(layer.in_proj_qkv, prefix + "linear_attn.in_proj_qkv", conv_dim, dim);
      place(layer.in_proj_z, prefix + "linear_attn.in_proj_z", c.linear_value_dim(), dim);
      place(layer.in_proj_b, prefix + "linear_attn.in_proj_b", c.linear_num_value_heads, dim);
      place(layer.in_proj_a, prefix + "linear_attn.in_proj_a", c.linear_num_value_heads, dim);
      place(layer.out_proj, prefix + "linear_attn.out_proj", dim, c.linear_value_dim());
      layer.conv1d = arena.take<float>(conv_dim * c.linear_conv_kernel);
      layer.dt_bias = arena.take<float>(c.linear_num_value_heads);
      layer.a_log = arena.take<float>(c.linear_num_value_heads);
      layer.delta_norm = arena.take<float>(c.linear_value_head_dim);
    }
    place(layer.gate_proj, prefix + "mlp.gate_proj", c.intermediate_size, dim);
    place(layer.up_proj, prefix + "mlp.up_proj", c.intermediate_size, dim);
    place(layer.down_proj, prefix + "mlp.down_proj", dim, c.intermediate_size);
  }
  place(lm_head, "lm_head", lm_head_rows, dim);
}

void CudaBackend::Impl::layout_runtime(Arena& arena) {
  const ModelConfig& c = config;
  const int64_t T = options.max_batch_tokens, R = options.max_logit_rows, dim = c.hidden_size;
  const int64_t q_width = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const int64_t conv_dim = c.linear_conv_dim(), value_dim = c.linear_value_dim(), hv = c.linear_num_value_heads;
  max_tokens = T;
  max_rows = R;
  max_blocks_per_slot = (options.max_context + kKvBlockSize - 1) / kKvBlockSize;

  x = arena.take<float>(T * dim);
  h = arena.take<uint16_t>(T * padded_k(dim));
  proj0 = arena.take<float>(T * std::max<int64_t>({c.q_proj_rows(), conv_dim, c.intermediate_size}));
  proj1 = arena.take<float>(T * std::max<int64_t>({kv_width, value_dim, c.intermediate_size}));
  proj2 = arena.take<float>(T * std::max<int64_t>(kv_width, hv));
  proj3 = arena.take<float>(T * std::max<int64_t>(hv, 1));
  core = arena.take<float>(T * std::max<int64_t>(q_width, 1));
  attn_in = arena.take<uint16_t>(T * padded_k(std::max<int64_t>(q_width, 1)));
  delta_in = arena.take<uint16_t>(T * padded_k(std::max<int64_t>(value_dim, 1)));
  mlp_in = arena.take<uint16_t>(T * padded_k(c.intermediate_size));
  delta = arena.take<float>(T * dim);
  int64_t workspace = 1;
  for (int64_t t = 1; t <= T && c.num_kv_heads > 0; ++t) {
    const int splits = cuda::attention_splits(t, c.num_kv_heads, options.max_context);
    workspace = std::max(workspace, cuda::attention_workspace_floats(t, c.num_heads, c.head_dim, splits));
  }
  attention_workspace = arena.take<float>(workspace);
  if (std::max(T, R) > cuda::kGemvMaxM) {
    gemm_scratch_elements = 0;
    for (DeviceLinear* w : all_linears()) {
      if (w->nvfp4) gemm_scratch_elements = std::max(gemm_scratch_elements, w->out * w->in_padded);
    }
    gemm_scratch = gemm_scratch_elements > 0 ? arena.take<uint16_t>(gemm_scratch_elements) : nullptr;
    gemm_workspace = arena.take<uint8_t>(cuda::kGemmWorkspaceBytes);
  }
  final_in = arena.take<uint16_t>(R * padded_k(dim));
  logits = arena.take<float>(R * c.vocab_size);
  if (options.communicator) {
    shard_logits = arena.take<float>(R * lm_head_rows);
    gathered_logits = arena.take<float>(options.communicator->size() * R * lm_head_rows);
  }
  argmax = arena.take<int32_t>(R);
  argmax_scratch = arena.take<cuda::ArgmaxScratch>(R);  // zeroed with the arena at load

  meta_count = 7 * T + R + static_cast<int64_t>(options.max_slots) * max_blocks_per_slot;
  meta = arena.take<int32_t>(meta_count);
  tokens = meta;
  positions = tokens + T;
  slots = positions + T;
  chunk_first = slots + T;
  chunk_length = chunk_first + T;
  chunk_slot = chunk_length + T;
  chunk_start = chunk_slot + T;
  logit_rows = chunk_start + T;
  block_tables = logit_rows + R;

  const int64_t before_caches = arena.used();
  for (int i = 0; i < c.num_layers; ++i) {
    DeviceLayer& layer = layers[i];
    if (layer.kind == LayerKind::FullAttention) {
      layer.key_cache = arena.take<uint16_t>(num_blocks * kKvBlockSize * kv_width);
      layer.value_cache = arena.take<uint16_t>(num_blocks * kKvBlockSize * kv_width);
    }
  }
  kv_bytes = arena.used() - before_caches;
  for (int i = 0; i < c.num_layers; ++i) {
    DeviceLayer& layer = layers[i];
    if (layer.kind == LayerKind::LinearAttention) {
      layer.conv_state = arena.take<float>(options.max_slots * c.linear_conv_kernel * conv_dim);
      layer.recurrent_state = arena.take<float>(static_cast<int64_t>(options.max_slots) * hv *
                                                c.linear_key_head_dim * c.linear_value_head_dim);
    }
  }
  conv_ring_readers = arena.take<int32_t>(static_cast<int64_t>(options.max_slots) * c.linear_num_key_heads);
  state_bytes = arena.used() - before_caches - kv_bytes;
}

void CudaBackend::Impl::allocate(const std::vector<LinearKind>& kinds) {
  if (const char* strict = std::getenv("UBERLM_STRICT"); strict && std::string(strict) == "1") options.strict = true;
  if (options.max_slots < 1 || options.max_batch_tokens < 1 || options.max_logit_rows < 1 || options.max_context < 1) {
    fail("CudaBackend: max_slots, max_batch_tokens, max_logit_rows and max_context must be positive");
  }
  if (config.head_dim > cuda::kAttentionMaxHeadDim) {
    fail("CudaBackend: head_dim {} exceeds the attention kernel's {}", config.head_dim, cuda::kAttentionMaxHeadDim);
  }
  graphs_enabled = options.cuda_graphs;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // cuBLAS takes device memory of its own with its handle: make it before measuring what is free.
  if (std::max(options.max_batch_tokens, options.max_logit_rows) > cuda::kGemvMaxM) {
    gemm = std::make_unique<cuda::Gemm>(stream);
  }
  const int ranks = options.communicator ? options.communicator->size() : 1;
  lm_head_rows = (config.vocab_size + ranks - 1) / ranks;
  Arena weight_plan;
  layout_weights(weight_plan, kinds);
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t margin = int64_t{512} << 20;  // CUDA context, graphs, the GEMV's launch needs
  num_blocks = plan_kv_blocks(weight_plan.used(), static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes),
                              margin);
  Arena runtime_plan;
  layout_runtime(runtime_plan);
  const int64_t needed = weight_plan.used() + runtime_plan.used();
  if (needed + margin > static_cast<int64_t>(free_bytes)) {
    fail("CudaBackend: the plan needs {:.2f} GiB (weights {:.2f}, KV cache {:.2f} for {} blocks of {} tokens, "
         "delta-net state {:.2f} for {} slots, activations and workspace {:.2f} for {} tokens) plus {:.2f} GiB margin, "
         "but the GPU has {:.2f} GiB free of {:.2f}",
         gib(needed), gib(weight_plan.used()), gib(kv_bytes), num_blocks, kKvBlockSize,
         gib(state_bytes), options.max_slots, gib(runtime_plan.used() - kv_bytes - state_bytes),
         options.max_batch_tokens, gib(margin), gib(static_cast<int64_t>(free_bytes)), gib(static_cast<int64_t>(total_bytes)));
  }
  CUDA_CHECK(cudaMalloc(&weight_memory, weight_plan.used()));
  CUDA_CHECK(cudaMalloc(&runtime_memory, runtime_plan.used()));
  weight_arena_bytes = weight_plan.used();
  runtime_arena_bytes = runtime_plan.used();
  Arena weight_arena(reinterpret_cast<uintptr_t>(weight_memory)), runtime_arena(reinterpret_cast<uintptr_t>(runtime_memory));
  layout_weights(weight_arena, kinds);
  layout_runtime(runtime_arena);
  // Zero everything once: the K padding of activation rows must stay zero (kernels never write it).
  CUDA_CHECK(cudaMemset(runtime_memory, 0, runtime_arena_bytes));
  CUDA_CHECK(cudaMemset(weight_memory, 0, weight_arena_bytes));
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&meta_host), meta_count * sizeof(int32_t)));
  std::memset(meta_host, 0, meta_count * sizeof(int32_t));
  if (gemm) gemm->set_workspace(gemm_workspace, cuda::kGemmWorkspaceBytes);
  init_common();
}

int64_t CudaBackend::Impl::plan_kv_blocks(int64_t weight_bytes, int64_t free_bytes, int64_t total_bytes,
                                          int64_t margin) {
  if (options.num_kv_blocks < 0) fail("CudaBackend: num_kv_blocks must be >= 0, got {}", options.num_kv_blocks);
  if (!(options.gpu_memory_utilization >= 0 && options.gpu_memory_utilization <= 1)) {
    fail("CudaBackend: gpu_memory_utilization must be in [0, 1] (0: no memory-based sizing), got {}",
         options.gpu_memory_utilization);
  }
  // Runtime bytes without KV (a planning pass with an empty pool), the bytes of one block in every
  // full-attention layer's key and value pools, and what aligning each pool can add.
  num_blocks = 0;
  Arena without_kv;
  layout_runtime(without_kv);
  const int64_t kv_pools = 2 * static_cast<int64_t>(config.num_layers_of(LayerKind::FullAttention));
  const int64_t block_bytes =
      kv_pools * kKvBlockSize * config.num_kv_heads * config.head_dim * static_cast<int64_t>(sizeof(uint16_t));
  int64_t blocks = max_blocks_per_slot * options.max_slots;
  if (options.num_kv_blocks > 0) {
    blocks = options.num_kv_blocks;
  } else if (options.gpu_memory_utilization > 0 && block_bytes > 0) {
    const double utilization = options.gpu_memory_utilization;
    const int64_t held_by_others = total_bytes - free_bytes;
    const int64_t allowed = std::min(static_cast<int64_t>(utilization * static_cast<double>(total_bytes)) - held_by_others,
                                     free_bytes - margin);
    const int64_t budget = allowed - weight_bytes - without_kv.used() - kv_pools * kAlignment;
    blocks = std::max<int64_t>(budget, 0) / block_bytes;
    spdlog::info("cuda backend: {:.0f}% of {:.2f} GiB ({:.2f} GiB held before load) minus weights {:.2f} GiB and "
                 "activations/states {:.2f} GiB leaves {:.2f} GiB: {} KV blocks of {} tokens",
                 100 * utilization, gib(total_bytes), gib(held_by_others), gib(weight_bytes), gib(without_kv.used()),
                 gib(std::max<int64_t>(budget, 0)), blocks, kKvBlockSize);
  }
  if (blocks < max_blocks_per_slot) {
    fail("CudaBackend: a KV pool of {} blocks ({} tokens) cannot hold one sequence of max_context {} tokens",
         blocks, blocks * kKvBlockSize, options.max_context);
  }
  return blocks;
}

void CudaBackend::Impl::assign_blocks(const SequenceChunk& chunk, int64_t start, int32_t* host_tables) {
  int32_t* row = host_tables + static_cast<int64_t>(chunk.slot) * max_blocks_per_slot;
  const int64_t needed = (start + chunk.num_tokens + kKvBlockSize - 1) / kKvBlockSize;
  if (options.scheduler_owns_kv_blocks) {
    const int64_t given = static_cast<int64_t>(chunk.block_table.size());
    if (given < needed || given > max_blocks_per_slot) {
      fail("CudaBackend::forward: slot {} reaches {} tokens and needs {} KV blocks, its block table has {} (at most {})",
           chunk.slot, start + chunk.num_tokens, needed, given, max_blocks_per_slot);
    }
    for (int64_t b = 0; b < given; ++b) {
      const int32_t block = chunk.block_table[b];
      if (block < 0 || block >= num_blocks) {
        fail("CudaBackend::forward: slot {} block table entry {} is block {}, the pool has {}", chunk.slot, b, block,
             num_blocks);
      }
      row[b] = block;
    }
    return;
  }
  if (!chunk.block_table.empty()) {
    fail("CudaBackend::forward: slot {} came with a block table, but this backend takes its own KV blocks "
         "(scheduler_owns_kv_blocks is off)",
         chunk.slot);
  }
  std::vector<int32_t>& blocks = slot_blocks[chunk.slot];
  while (static_cast<int64_t>(blocks.size()) < needed) {
    if (free_blocks.empty()) fail("CudaBackend::forward: the KV block pool ({} blocks) is exhausted", num_blocks);
    blocks.push_back(free_blocks.back());
    free_blocks.pop_back();
    row[blocks.size() - 1] = blocks.back();
  }
}

void CudaBackend::Impl::init_common() {
  lengths.assign(options.max_slots, 0);
  slot_blocks.assign(options.max_slots, {});
  free_blocks.clear();
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_blocks.push_back(static_cast<int32_t>(b));
  // RoPE frequencies exactly as cpu::Rope computes them.
  inv_freq_host.assign(std::max(1, config.rotary_dim / 2), 0.0f);
  for (int j = 0; j < config.rotary_dim / 2; ++j) {
    inv_freq_host[j] = 1.0f / std::pow(config.rope_theta, static_cast<float>(2 * j) / static_cast<float>(config.rotary_dim));
  }
  CUDA_CHECK(cudaMemcpy(inv_freq, inv_freq_host.data(), inv_freq_host.size() * sizeof(float), cudaMemcpyHostToDevice));
}

namespace {
void upload_f32(float* dst, const TensorView& tensor) {
  const std::vector<float> values = to_f32(tensor);
  CUDA_CHECK(cudaMemcpy(dst, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice));
}

void upload_linear(DeviceLinear& dst, const LinearWeight& src) {
  if (src.out_features() != dst.out || src.in_features() != dst.in) {
    fail("CudaBackend: {} is [{}, {}], the config implies [{}, {}]", src.name, src.out_features(), src.in_features(),
         dst.out, dst.in);
  }
  if (src.nvfp4) {
    // Rows padded from K to K_p with zero codes and zero scales.
    const Nvfp4Weight& w = *src.nvfp4;
    std::vector<uint8_t> packed(dst.out * dst.in_padded / 2, 0), scales(dst.out * dst.in_padded / 16, 0);
    for (int64_t r = 0; r < dst.out; ++r) {
      std::memcpy(packed.data() + r * dst.in_padded / 2, w.packed + r * w.cols / 2, w.cols / 2);
      std::memcpy(scales.data() + r * dst.in_padded / 16, w.scales + r * w.cols / 16, w.cols / 16);
    }
    CUDA_CHECK(cudaMemcpy(dst.packed, packed.data(), packed.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dst.scales, scales.data(), scales.size(), cudaMemcpyHostToDevice));
    dst.global_scale = w.global_scale;
  } else {
    // bf16 rows padded with zeros, converted in slabs to bound host memory.
    constexpr int64_t kSlabRows = 4096;
    std::vector<float> row(dst.in);
    std::vector<uint16_t> slab;
    for (int64_t r0 = 0; r0 < dst.out; r0 += kSlabRows) {
      const int64_t rows = std::min(kSlabRows, dst.out - r0);
      slab.assign(rows * dst.in_padded, 0);
      for (int64_t r = 0; r < rows; ++r) {
        TensorView view{src.weight.dtype, {dst.in},
                        static_cast<const uint8_t*>(src.weight.data) + (r0 + r) * dst.in * dtype_size(src.weight.dtype)};
        to_f32(view, row.data());
        for (int64_t k = 0; k < dst.in; ++k) slab[r * dst.in_padded + k] = f32_to_bf16(row[k]);
      }
      CUDA_CHECK(cudaMemcpy(dst.bf16 + r0 * dst.in_padded, slab.data(), slab.size() * 2, cudaMemcpyHostToDevice));
    }
  }
  if (dst.bias) upload_f32(dst.bias, src.bias);
}

std::vector<LinearKind> linear_kinds_of(const ModelWeights& weights) {
  std::vector<LinearKind> kinds;
  auto add = [&](const LinearWeight& w) { kinds.push_back({w.nvfp4.has_value(), w.bias.data != nullptr}); };
  for (const LayerWeights& layer : weights.layers) {
    if (layer.kind == LayerKind::FullAttention) {
      for (const LinearWeight* w : {&layer.attention.q_proj, &layer.attention.k_proj, &layer.attention.v_proj,
                                    &layer.attention.o_proj}) {
        add(*w);
      }
    } else {
      for (const LinearWeight* w : {&layer.delta_net.in_proj_qkv, &layer.delta_net.in_proj_z, &layer.delta_net.in_proj_b,
                                    &layer.delta_net.in_proj_a, &layer.delta_net.out_proj}) {
        add(*w);
      }
    }
    for (const LinearWeight* w : {&layer.mlp.gate_proj, &layer.mlp.up_proj, &layer.mlp.down_proj}) add(*w);
  }
  add(weights.lm_head);
  return kinds;
}
}  // namespace

void CudaBackend::Impl::upload(const ModelWeights& w) {
  const int64_t dim = config.hidden_size;
  {
    std::vector<uint16_t> table(static_cast<int64_t>(config.vocab_size) * dim);
    const std::vector<float> values = to_f32(w.embed_tokens);
    for (size_t i = 0; i < values.size(); ++i) table[i] = f32_to_bf16(values[i]);
    CUDA_CHECK(cudaMemcpy(embed_tokens, table.data(), table.size() * 2, cudaMemcpyHostToDevice));
  }
  upload_f32(final_norm, w.final_norm);
  for (int i = 0; i < config.num_layers; ++i) {
    DeviceLayer& layer = layers[i];
    const LayerWeights& src = w.layers[i];
    upload_f32(layer.input_norm, src.input_norm);
    upload_f32(layer.post_attention_norm, src.post_attention_norm);
    if (layer.kind == LayerKind::FullAttention) {
      upload_linear(layer.q_proj, src.attention.q_proj);
      upload_linear(layer.k_proj, src.attention.k_proj);
      upload_linear(layer.v_proj, src.attention.v_proj);
      upload_linear(layer.o_proj, src.attention.o_proj);
      if (layer.q_norm) upload_f32(layer.q_norm, src.attention.q_norm);
      if (layer.k_norm) upload_f32(layer.k_norm, src.attention.k_norm);
    } else {
      upload_linear(layer.in_proj_qkv, src.delta_net.in_proj_qkv);
      upload_linear(layer.in_proj_z, src.delta_net.in_proj_z);
      upload_linear(layer.in_proj_b, src.delta_net.in_proj_b);
      upload_linear(layer.in_proj_a, src.delta_net.in_proj_a);
      upload_linear(layer.out_proj, src.delta_net.out_proj);
      upload_f32(layer.conv1d, src.delta_net.conv1d);
      upload_f32(layer.dt_bias, src.delta_net.dt_bias);
      upload_f32(layer.a_log, src.delta_net.a_log);
      upload_f32(layer.delta_norm, src.delta_net.norm);
    }
    upload_linear(layer.gate_proj, src.mlp.gate_proj);
    upload_linear(layer.up_proj, src.mlp.up_proj);
    upload_linear(layer.down_proj, src.mlp.down_proj);
  }
  upload_linear(lm_head, w.lm_head);
}

void CudaBackend::Impl::fill_random(uint64_t seed) {
  uint64_t next_seed = seed;
  auto fill_f32 = [&](float* p, int64_t n, float low, float high) {
    CUDA_CHECK(cuda::launch_fill_random_f32(p, n, ++next_seed, low, high, stream));
  };
  // Values of unit-variance-preserving magnitude: uniform bf16 in +-sqrt(3 / in); NVFP4 codes uniform,
  // scales in [0.5, 0.94], global scale so that elements have rms ~ 1 / sqrt(in).
  auto fill_linear = [&](DeviceLinear& w) {
    const float bound = std::sqrt(3.0f / static_cast<float>(w.in));
    if (w.nvfp4) {
      CUDA_CHECK(cuda::launch_fill_random_bytes(w.packed, w.out * w.in_padded / 2, ++next_seed, 0xff, 0, stream));
      CUDA_CHECK(cuda::launch_fill_random_bytes(w.scales, w.out * w.in_padded / 16, ++next_seed, 0x07, 0x30, stream));
      w.global_scale = 1.0f / (2.1f * std::sqrt(static_cast<float>(w.in)));
    } else {
      CUDA_CHECK(cuda::launch_fill_random_bf16(w.bf16, w.out * w.in_padded, ++next_seed, bound, stream));
    }
    if (w.bias) fill_f32(w.bias, w.out, -0.1f, 0.1f);
  };
  const bool one_plus = config.norm_style == NormStyle::OnePlusWeight;
  const float norm_low = one_plus ? -0.1f : 0.9f, norm_high = one_plus ? 0.1f : 1.1f;
  const int64_t dim = config.hidden_size;
  CUDA_CHECK(cuda::launch_fill_random_bf16(embed_tokens, static_cast<int64_t>(config.vocab_size) * dim, ++next_seed,
                                           1.0f, stream));
  fill_f32(final_norm, dim, norm_low, norm_high);
  for (DeviceLayer& layer : layers) {
    fill_f32(layer.input_norm, dim, norm_low, norm_high);
    fill_f32(layer.post_attention_norm, dim, norm_low, norm_high);
    if (layer.kind == LayerKind::FullAttention) {
      if (layer.q_norm) fill_f32(layer.q_norm, config.head_dim, norm_low, norm_high);
      if (layer.k_norm) fill_f32(layer.k_norm, config.head_dim, norm_low, norm_high);
    } else {
      fill_f32(layer.conv1d, config.linear_conv_dim() * config.linear_conv_kernel, -0.5f, 0.5f);
      fill_f32(layer.dt_bias, config.linear_num_value_heads, -1.0f, 1.0f);
      fill_f32(layer.a_log, config.linear_num_value_heads, -1.0f, 0.5f);
      fill_f32(layer.delta_norm, config.linear_value_head_dim, 0.9f, 1.1f);
    }
  }
  for (DeviceLinear* w : all_linears()) fill_linear(*w);
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

// Zero-padded K columns: the runtime arena was zeroed at allocation, and no kernel writes a row's padding.
// The path is chosen by M alone: the GEMV up to 64 rows, cuBLAS above (planned at load whenever a forward
// can have more rows, so it is always there when needed).
void CudaBackend::Impl::linear(const DeviceLinear& w, const uint16_t* x_bf16, int64_t rows, float* y) {
  if (rows == 0) return;
  if (rows <= cuda::kGemvMaxM) {
    ++counters.gemv_linear_calls;
    if (w.nvfp4) cuda::gemv_nvfp4(w.nvfp4_view(), x_bf16, rows, y, DType::F32, stream);
    else cuda::gemv_bf16(w.bf16, w.out, w.in_padded, x_bf16, rows, y, DType::F32, stream);
  } else if (w.nvfp4) {
    ++counters.gemm_nvfp4_linear_calls;
    gemm->nvfp4(w.nvfp4_view(), gemm_scratch, gemm_scratch_elements, x_bf16, rows, y);
  } else {
    ++counters.gemm_bf16_linear_calls;
    gemm->bf16(w.bf16, w.out, w.in_padded, x_bf16, rows, y);
  }
  if (w.bias) CUDA_CHECK(cuda::launch_add_bias(y, w.bias, rows, w.out, stream));
}

// Linear layers that read the same activations in one GEMV launch when they can share one: up to
// kGemvMaxTargets weights of one format at most kGemvMaxM rows. Otherwise (mixed formats, as in
// checkpoints that keep some projections bf16, or prefill) each runs on its own: the same kernels, only
// more launches.
void CudaBackend::Impl::linear_group(std::initializer_list<LinearOutput> outputs, const uint16_t* x_bf16,
                                     int64_t rows) {
  const bool nvfp4 = outputs.begin()->weight->nvfp4;
  bool shared = rows <= cuda::kGemvMaxM && static_cast<int>(outputs.size()) <= cuda::kGemvMaxTargets;
  for (const LinearOutput& o : outputs) shared = shared && o.weight->nvfp4 == nvfp4;
  if (!shared) {
    for (const LinearOutput& o : outputs) linear(*o.weight, x_bf16, rows, o.y);
    return;
  }
  counters.gemv_linear_calls += static_cast<int64_t>(outputs.size());
  std::vector<cuda::Nvfp4GemvTarget> nvfp4_targets;
  std::vector<cuda::Bf16GemvTarget> bf16_targets;
  for (const LinearOutput& o : outputs) {
    if (nvfp4) nvfp4_targets.push_back({o.weight->nvfp4_view(), o.y});
    else bf16_targets.push_back({o.weight->bf16, o.weight->out, o.y});
  }
  const int64_t k = outputs.begin()->weight->in_padded;
  if (nvfp4) {
    cuda::gemv_nvfp4_multi(nvfp4_targets.data(), static_cast<int>(outputs.size()), x_bf16, rows, DType::F32, stream);
  } else {
    cuda::gemv_bf16_multi(bf16_targets.data(), static_cast<int>(outputs.size()), k, x_bf16, rows, DType::F32, stream);
  }
  for (const LinearOutput& o : outputs) {
    if (o.weight->bias) CUDA_CHECK(cuda::launch_add_bias(o.y, o.weight->bias, rows, o.weight->out, stream));
  }
}

void CudaBackend::Impl::reduce_partial_sums(int64_t tokens) {
  if (options.communicator) options.communicator->all_reduce_sum(delta, tokens * config.hidden_size, stream);
}

void CudaBackend::Impl::compute_logits(int64_t rows) {
  if (!options.communicator) {
    linear(lm_head, final_in, rows, logits);
    return;
  }
  linear(lm_head, final_in, rows, shard_logits);
  const NcclCommunicator& comm = *options.communicator;
  comm.all_gather(shard_logits, gathered_logits, rows * lm_head_rows, stream);
  // Rank r's [rows, lm_head_rows] block holds vocabulary columns r * lm_head_rows.. (the last one's padding dropped).
  const int64_t vocab = config.vocab_size;
  for (int r = 0; r < comm.size(); ++r) {
    const int64_t begin = r * lm_head_rows;
    const int64_t width = std::min(vocab, begin + lm_head_rows) - begin;
    if (width <= 0 || rows == 0) continue;
    CUDA_CHECK(cudaMemcpy2DAsync(logits + begin, vocab * sizeof(float), gathered_logits + r * rows * lm_head_rows,
                                 lm_head_rows * sizeof(float), width * sizeof(float), rows, cudaMemcpyDeviceToDevice,
                                 stream));
  }
}

void CudaBackend::Impl::begin(const char* op) {
  if (!profiling) return;
  PendingEvent event{op, nullptr, nullptr};
  CUDA_CHECK(cudaEventCreate(&event.start));
  CUDA_CHECK(cudaEventCreate(&event.stop));
  CUDA_CHECK(cudaEventRecord(event.start, stream));
  pending.push_back(event);
}

void CudaBackend::Impl::end() {
  if (!profiling) return;
  CUDA_CHECK(cudaEventRecord(pending.back().stop, stream));
}

void CudaBackend::Impl::collect_profile() {
  for (PendingEvent& event : pending) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, event.start, event.stop));
    KernelTime& entry = profile[event.op];
    entry.op = event.op;
    entry.microseconds += 1000.0 * ms;
    ++entry.launches;
    cudaEventDestroy(event.start);
    cudaEventDestroy(event.stop);
  }
  pending.clear();
}

void CudaBackend::Impl::attention_layer(const DeviceLayer& layer, int64_t tokens) {
  const ModelConfig& c = config;
  const int64_t q_width = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const float norm_offset = c.norm_style == NormStyle::OnePlusWeight ? 1.0f : 0.0f;
  begin("linear_attention_in");
  // proj0 [T, H hd (x2 when gated)], proj1 and proj2 [T, KV hd]
  linear_group({{&layer.q_proj, proj0}, {&layer.k_proj, proj1}, {&layer.v_proj, proj2}}, h, tokens);
  end();
  const cuda::PagedKvLayout kv_layout{static_cast<int>(kKvBlockSize), static_cast<int>(max_blocks_per_slot),
                                      c.num_kv_heads, c.head_dim};
  begin("qk_norm_rope_kv_append");
  const cuda::AttentionPrepShape shape{c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim,
                                       c.attn_output_gate, c.qk_norm, norm_offset, c.rms_norm_eps};
  const cuda::KvCacheWrite cache_write{proj2, slots, block_tables, kv_layout, layer.key_cache, layer.value_cache};
  CUDA_CHECK(cuda::launch_qk_norm_rope(proj0, proj1, positions, tokens, shape, inv_freq, layer.q_norm, layer.k_norm,
                                       core, cache_write, stream));
  end();
  begin("attention");
  const int splits = cuda::attention_splits(tokens, c.num_kv_heads, options.max_context);
  const int64_t gate_head_stride = 2 * static_cast<int64_t>(c.head_dim);
  const cuda::AttentionOutput output{c.attn_output_gate ? proj0 + c.head_dim : nullptr, c.q_proj_rows(),
                                     gate_head_stride, attn_in, padded_k(q_width)};
  CUDA_CHECK(cuda::launch_attention_decode(core, slots, positions, tokens, c.num_heads, block_tables, kv_layout,
                                           layer.key_cache, layer.value_cache, splits, attention_workspace, output,
                                           stream));
  end();
  begin("linear_attention_out");
  linear(layer.o_proj, attn_in, tokens, delta);
  reduce_partial_sums(tokens);
  end();
}

void CudaBackend::Impl::delta_net_layer(const DeviceLayer& layer, int64_t tokens, int64_t chunks) {
  const ModelConfig& c = config;
  const cuda::DeltaNetDims dims{c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                                c.linear_value_head_dim, c.linear_conv_kernel};
  const cuda::DeviceChunks device_chunks{chunk_first, chunk_length, chunk_slot, chunk_start, static_cast<int>(chunks)};
  begin("linear_delta_in");
  // proj0 [T, conv_dim], proj1 [T, value_dim], proj2 and proj3 [T, Hv]
  linear_group({{&layer.in_proj_qkv, proj0}, {&layer.in_proj_z, proj1}, {&layer.in_proj_b, proj2},
                {&layer.in_proj_a, proj3}},
               h, tokens);
  end();
  begin("gated_delta_net");
  const cuda::DeltaNetWeights weights{layer.conv1d, layer.a_log, layer.dt_bias, layer.delta_norm, c.rms_norm_eps};
  const cuda::DeltaNetState state{layer.conv_state, layer.recurrent_state, conv_ring_readers};
  CUDA_CHECK(cuda::launch_gated_delta_net(proj0, proj1, proj3, proj2, weights, device_chunks, tokens, dims, state,
                                          delta_in, padded_k(dims.value_dim()), stream));
  end();
  begin("linear_delta_out");
  linear(layer.out_proj, delta_in, tokens, delta);
  reduce_partial_sums(tokens);
  end();
}

// Up to kGemvMaxM rows, gate/up weights of one format without bias run as one GEMV whose epilogue writes
// SwiGLU's bf16 output (the down projection's input) directly, with the same bits as the GEMV followed by
// launch_swiglu. Above kGemvMaxM rows (cuBLAS), or for a mixed-format or biased pair (which the paired
// kernel cannot take: one weight format, no bias term), the projections write fp32 and launch_swiglu
// runs apart.
void CudaBackend::Impl::mlp(const DeviceLayer& layer, int64_t tokens) {
  const int64_t inter = config.intermediate_size;
  const DeviceLinear &gate = layer.gate_proj, &up = layer.up_proj;
  if (tokens <= cuda::kGemvMaxM && gate.nvfp4 == up.nvfp4 && !gate.bias && !up.bias) {
    begin("linear_mlp_gate_up_swiglu");
    counters.gemv_linear_calls += 2;
    ++counters.gemv_swiglu_calls;
    if (gate.nvfp4) {
      cuda::gemv_nvfp4_swiglu(gate.nvfp4_view(), up.nvfp4_view(), h, tokens, mlp_in, padded_k(inter), stream);
    } else {
      cuda::gemv_bf16_swiglu(gate.bf16, up.bf16, gate.out, gate.in_padded, h, tokens, mlp_in, padded_k(inter), stream);
    }
    end();
  } else {
    begin("linear_mlp_gate_up");
    linear_group({{&gate, proj0}, {&up, proj1}}, h, tokens);
    end();
    begin("swiglu");
    CUDA_CHECK(cuda::launch_swiglu(proj0, proj1, tokens, inter, mlp_in, padded_k(inter), stream));
    end();
  }
  begin("linear_mlp_down");
  linear(layer.down_proj, mlp_in, tokens, delta);
  reduce_partial_sums(tokens);
  end();
}

CudaBackend::Impl::BatchPlan CudaBackend::Impl::prepare(const ForwardBatch& batch, int64_t row_offset,
                                                        int64_t row_limit) {
  BatchPlan plan;
  plan.tokens = static_cast<int64_t>(batch.tokens.size());
  if (plan.tokens > max_tokens) {
    fail("CudaBackend::forward: {} tokens exceed max_batch_tokens {} planned at load", plan.tokens, max_tokens);
  }
  const int64_t T = max_tokens;
  int32_t* host_tokens = meta_host;
  int32_t* host_positions = host_tokens + T;
  int32_t* host_slots = host_positions + T;
  int32_t* host_first = host_slots + T;
  int32_t* host_length = host_first + T;
  int32_t* host_chunk_slot = host_length + T;
  int32_t* host_start = host_chunk_slot + T;
  int32_t* host_rows = host_start + T;
  int32_t* host_tables = host_rows + max_rows;
  std::vector<bool> seen(options.max_slots, false);
  int64_t offset = 0, row_index = 0;
  plan.decode_only = true;
  for (const SequenceChunk& chunk : batch.chunks) {
    if (chunk.slot < 0 || chunk.slot >= options.max_slots) fail("CudaBackend::forward: invalid slot {}", chunk.slot);
    if (seen[chunk.slot]) fail("CudaBackend::forward: slot {} appears twice in one batch", chunk.slot);
    seen[chunk.slot] = true;
    const int64_t start = lengths[chunk.slot];
    if (start + chunk.num_tokens > options.max_context) {
      fail("CudaBackend::forward: slot {} would reach {} tokens, max_context is {}", chunk.slot,
           start + chunk.num_tokens, options.max_context);
    }
    if (chunk.num_tokens != 1 || !chunk.want_logits) plan.decode_only = false;
    if (chunk.num_tokens == 0) continue;
    assign_blocks(chunk, start, host_tables);
    for (int64_t i = 0; i < chunk.num_tokens; ++i) {
      const int32_t token = batch.tokens[offset + i];
      if (token < 0 || token >= config.vocab_size) fail("CudaBackend::forward: token id {} outside the vocabulary", token);
      host_tokens[offset + i] = token;
      host_positions[offset + i] = static_cast<int32_t>(start + i);
      host_slots[offset + i] = chunk.slot;
    }
    host_first[plan.chunks] = static_cast<int32_t>(offset);
    host_length[plan.chunks] = static_cast<int32_t>(chunk.num_tokens);
    host_chunk_slot[plan.chunks] = chunk.slot;
    host_start[plan.chunks] = static_cast<int32_t>(start);
    ++plan.chunks;
    if (chunk.want_logits) {
      const int64_t first = batch.logits_for_every_token ? offset : offset + chunk.num_tokens - 1;
      for (int64_t t = first; t < offset + chunk.num_tokens; ++t, ++row_index) {
        if (row_index >= row_offset && row_index < row_offset + row_limit) {
          host_rows[plan.rows++] = static_cast<int32_t>(t);
        }
      }
    }
    offset += chunk.num_tokens;
  }
  if (offset != plan.tokens) fail("CudaBackend::forward: chunks cover {} tokens, batch has {}", offset, plan.tokens);
  CUDA_CHECK(cudaMemcpyAsync(meta, meta_host, meta_count * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  return plan;
}

void CudaBackend::Impl::run_kernels(const BatchPlan& plan) {
  const ModelConfig& c = config;
  const int64_t T = plan.tokens, dim = c.hidden_size;
  const float norm_offset = c.norm_style == NormStyle::OnePlusWeight ? 1.0f : 0.0f;
  begin("embedding");
  CUDA_CHECK(cuda::launch_embedding(embed_tokens, tokens, T, dim, x, stream));
  end();
  const float* pending_delta = nullptr;  // the last sublayer's output, added to x by the next norm
  for (const DeviceLayer& layer : layers) {
    begin("rms_norm");
    CUDA_CHECK(cuda::launch_add_rms_norm(x, pending_delta, nullptr, T, dim, layer.input_norm, norm_offset,
                                         c.rms_norm_eps, h, padded_k(dim), stream));
    end();
    if (layer.kind == LayerKind::FullAttention) attention_layer(layer, T);
    else delta_net_layer(layer, T, plan.chunks);
    begin("rms_norm");
    CUDA_CHECK(cuda::launch_add_rms_norm(x, delta, nullptr, T, dim, layer.post_attention_norm, norm_offset,
                                         c.rms_norm_eps, h, padded_k(dim), stream));
    end();
    mlp(layer, T);
    pending_delta = delta;
  }
  if (pending_delta) {
    begin("residual_add");
    CUDA_CHECK(cuda::launch_add_inplace(x, pending_delta, T * dim, stream));
    end();
  }
  if (plan.rows == 0) return;
  begin("final_norm");
  CUDA_CHECK(cuda::launch_add_rms_norm(x, nullptr, logit_rows, plan.rows, dim, final_norm, norm_offset,
                                       c.rms_norm_eps, final_in, padded_k(dim), stream));
  end();
  begin("lm_head");
  compute_logits(plan.rows);
  end();
}

void CudaBackend::Impl::run(const BatchPlan& plan) {
  const bool use_graph = graphs_enabled && !profiling && plan.decode_only && plan.tokens > 0 &&
                         plan.rows == plan.tokens;
  if (!use_graph) {
    run_kernels(plan);
    return;
  }
  auto found = decode_graphs.find(plan.tokens);
  if (found == decode_graphs.end()) {
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      run_kernels(plan);
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(status);
    found = decode_graphs.emplace(plan.tokens, exec).first;
    ++counters.graph_captures;
  }
  CUDA_CHECK(cudaGraphLaunch(found->second, stream));
  ++counters.graph_replays;
}

CudaBackend::CudaBackend(const Model& model, const CudaBackendOptions& options)
    : CudaBackend(model.config, model.weights, options) {}

CudaBackend::CudaBackend(const ModelConfig& config, const ModelWeights& weights, const CudaBackendOptions& options)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = config;
  impl_->options = options;
  impl_->allocate(linear_kinds_of(weights));
  impl_->upload(weights);
  spdlog::info("cuda backend: {}", memory_summary());
}

CudaBackend::CudaBackend(const ModelConfig& config, SyntheticFormat format, const CudaBackendOptions& options,
                         uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = config;
  impl_->options = options;
  std::vector<LinearKind> kinds;
  for (int i = 0; i < config.num_layers; ++i) {
    const int per_layer = (config.layer_kinds[i] == LayerKind::FullAttention ? 4 : 5) + 3;
    for (int j = 0; j < per_layer; ++j) kinds.push_back({format == SyntheticFormat::Nvfp4, false});
  }
  kinds.push_back({false, false});  // lm_head bf16
  impl_->allocate(kinds);
  impl_->fill_random(seed);
}

CudaBackend::~CudaBackend() = default;

const ModelConfig& CudaBackend::config() const { return impl_->config; }
int CudaBackend::max_slots() const { return impl_->options.max_slots; }
int64_t CudaBackend::cached_length(int slot) const { return impl_->lengths.at(slot); }

std::optional<KvBlockPool> CudaBackend::kv_block_pool() const {
  if (!impl_->options.scheduler_owns_kv_blocks) return std::nullopt;
  return KvBlockPool{static_cast<int>(kKvBlockSize), impl_->num_blocks};
}

void CudaBackend::release(int slot) {
  Impl& d = *impl_;
  if (slot < 0 || slot >= d.options.max_slots) fail("CudaBackend::release: invalid slot {}", slot);
  for (int32_t block : d.slot_blocks[slot]) d.free_blocks.push_back(block);
  d.slot_blocks[slot].clear();
  d.lengths[slot] = 0;  // a chunk starting at 0 ignores the slot's old conv and recurrent states
}

int64_t CudaBackend::forward_on_device(const ForwardBatch& batch) {
  Impl& d = *impl_;
  const Impl::BatchPlan plan = d.prepare(batch, 0, d.max_rows);
  int64_t wanted = 0;
  for (const SequenceChunk& chunk : batch.chunks) {
    if (chunk.want_logits && chunk.num_tokens > 0) wanted += batch.logits_for_every_token ? chunk.num_tokens : 1;
  }
  if (wanted > d.max_rows) fail("CudaBackend::forward_on_device: {} logits rows exceed max_logit_rows {}", wanted, d.max_rows);
  d.run(plan);
  CUDA_CHECK(cudaStreamSynchronize(d.stream));
  if (d.profiling) d.collect_profile();
  for (const SequenceChunk& chunk : batch.chunks) d.lengths[chunk.slot] += chunk.num_tokens;
  d.rows_of_last_forward = plan.rows;
  return plan.rows;
}

std::vector<int32_t> CudaBackend::argmax_tokens() {
  Impl& d = *impl_;
  std::vector<int32_t> out(d.rows_of_last_forward);
  if (out.empty()) return out;
  CUDA_CHECK(cuda::launch_argmax(d.logits, d.rows_of_last_forward, d.config.vocab_size, d.argmax_scratch, d.argmax,
                                    d.stream));
  CUDA_CHECK(cudaMemcpyAsync(out.data(), d.argmax, out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, d.stream));
  CUDA_CHECK(cudaStreamSynchronize(d.stream));
  return out;
}

ForwardResult CudaBackend::forward(const ForwardBatch& batch) {
  Impl& d = *impl_;
  int64_t wanted = 0;
  for (const SequenceChunk& chunk : batch.chunks) {
    if (chunk.want_logits && chunk.num_tokens > 0) wanted += batch.logits_for_every_token ? chunk.num_tokens : 1;
  }
  ForwardResult result;
  result.rows = wanted;
  if (batch.argmax_only && wanted <= d.max_rows) {
    forward_on_device(batch);
    result.argmax = argmax_tokens();
    return result;
  }
  result.logits.resize(wanted * d.config.vocab_size);
  if (wanted <= d.max_rows) {
    forward_on_device(batch);
    CUDA_CHECK(cudaMemcpy(result.logits.data(), d.logits, result.logits.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return result;
  }
  // More rows than the logits buffer: run the decoder once, then the final norm and lm_head per piece.
  Impl::BatchPlan plan = d.prepare(batch, 0, d.max_rows);
  d.run_kernels(plan);
  for (int64_t row0 = 0; row0 < wanted; row0 += d.max_rows) {
    if (row0 > 0) {
      plan = d.prepare(batch, row0, d.max_rows);
      CUDA_CHECK(cuda::launch_add_rms_norm(d.x, nullptr, d.logit_rows, plan.rows, d.config.hidden_size, d.final_norm,
                                           d.config.norm_style == NormStyle::OnePlusWeight ? 1.0f : 0.0f,
                                           d.config.rms_norm_eps, d.final_in, padded_k(d.config.hidden_size),
                                           d.stream));
      d.compute_logits(plan.rows);
    }
    CUDA_CHECK(cudaMemcpyAsync(result.logits.data() + row0 * d.config.vocab_size, d.logits,
                               plan.rows * d.config.vocab_size * sizeof(float), cudaMemcpyDeviceToHost, d.stream));
    CUDA_CHECK(cudaStreamSynchronize(d.stream));
  }
  if (d.profiling) d.collect_profile();
  for (const SequenceChunk& chunk : batch.chunks) d.lengths[chunk.slot] += chunk.num_tokens;
  if (batch.argmax_only) result.argmax = argmax_rows(result.logits, wanted, d.config.vocab_size);
  return result;
}

void CudaBackend::set_cuda_graphs(bool enabled) { impl_->graphs_enabled = enabled; }
void CudaBackend::set_profiling(bool enabled) { impl_->profiling = enabled; }

std::vector<KernelTime> CudaBackend::take_profile() {
  std::vector<KernelTime> out;
  for (auto& [op, time] : impl_->profile) out.push_back(time);
  impl_->profile.clear();
  return out;
}

int64_t CudaBackend::weight_bytes() const {
  int64_t bytes = 0;
  for (DeviceLinear* w : impl_->all_linears()) bytes += w->bytes();
  return bytes;
}

int64_t CudaBackend::cache_bytes_per_token(int64_t context) const {
  const ModelConfig& c = impl_->config;
  const int64_t kv = 2 * context * c.num_kv_heads * c.head_dim * 2;  // keys and values, bf16
  const int64_t conv = c.linear_conv_dim() * c.linear_conv_kernel * 4;  // kernel - 1 inputs read, one written
  const int64_t state = static_cast<int64_t>(c.linear_num_value_heads) * c.linear_key_head_dim * c.linear_value_head_dim * 4;
  return c.num_layers_of(LayerKind::FullAttention) * kv + c.num_layers_of(LayerKind::LinearAttention) * (conv + 2 * state);
}

CudaBackend::Counters CudaBackend::counters() const { return impl_->counters; }

std::string CudaBackend::memory_summary() const {
  const Impl& d = *impl_;
  return fmt::format("weights {:.3f} GiB, KV cache {:.3f} GiB ({} blocks = {} tokens; {} slots of up to {} tokens), "
                     "delta-net state {:.3f} GiB, activations {:.3f} GiB ({} tokens per forward) of which the "
                     "prefill GEMM's NVFP4 scratch {:.3f} GiB",
                     gib(d.weight_arena_bytes), gib(d.kv_bytes), d.num_blocks, d.num_blocks * kKvBlockSize,
                     d.options.max_slots, d.options.max_context,
                     gib(d.state_bytes), gib(d.runtime_arena_bytes - d.kv_bytes - d.state_bytes),
                     d.options.max_batch_tokens, gib(d.gemm_scratch_elements * 2));
}

#endif  // UBERLM_WITH_CUDA

}  // namespace uberlm
