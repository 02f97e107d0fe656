#include "runtime/cuda/device_model.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/nvfp4_gemv_layout.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "ops/cuda/random_fill.h"

namespace uberlm::gpu {

namespace {

int64_t padded_k(int64_t k) { return round_up(k, cuda::kGemvKMultiple); }

void place_linear(Arena& arena, const std::string& name, int64_t out, int64_t in, LinearFormat format,
                  bool wgmma_tiles, DeviceLinear& w) {
  w.name = name;
  w.out = out;
  w.in = in;
  w.in_padded = padded_k(in);
  w.nvfp4 = format.nvfp4;
  if (w.nvfp4) {
    w.packed = arena.take<uint8_t>(out * w.in_padded / 2);
    w.scales = arena.take<uint8_t>(out * w.in_padded / 16);
    if (wgmma_tiles && cuda::nvfp4_wgmma_layout_fits(out, w.in_padded)) {
      w.wgmma_tiles = arena.take<uint8_t>(cuda::nvfp4_wgmma_layout_bytes(out, w.in_padded));
    }
  } else {
    w.bf16 = arena.take<uint16_t>(out * w.in_padded);
  }
  w.bias = format.bias ? arena.take<float>(out) : nullptr;
}

void upload_f32(float* dst, const TensorView& tensor) {
  const std::vector<float> values = to_f32(tensor);
  CUDA_CHECK(cudaMemcpy(dst, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice));
}

// NVFP4 rows padded from K to K_p with zero codes and zero scales, the codes tiled for the GEMV.
void upload_nvfp4(DeviceLinear& dst, const Nvfp4Weight& w) {
  std::vector<uint8_t> packed(dst.out * dst.in_padded / 2, 0), scales(dst.out * dst.in_padded / 16, 0);
  for (int64_t r = 0; r < dst.out; ++r) {
    std::memcpy(packed.data() + r * dst.in_padded / 2, w.packed + r * w.cols / 2, w.cols / 2);
    std::memcpy(scales.data() + r * dst.in_padded / 16, w.scales + r * w.cols / 16, w.cols / 16);
  }
  packed = cuda::tile_nvfp4_codes_for_gemv(packed.data(), dst.out, dst.in_padded);
  CUDA_CHECK(cudaMemcpy(dst.packed, packed.data(), packed.size(), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dst.scales, scales.data(), scales.size(), cudaMemcpyHostToDevice));
  dst.global_scale = w.global_scale;
}

// bf16 rows padded with zeros, converted in slabs to bound host memory.
void upload_dense(DeviceLinear& dst, const TensorView& weight) {
  constexpr int64_t kSlabRows = 4096;
  std::vector<float> row(dst.in);
  std::vector<uint16_t> slab;
  for (int64_t r0 = 0; r0 < dst.out; r0 += kSlabRows) {
    const int64_t rows = std::min(kSlabRows, dst.out - r0);
    slab.assign(rows * dst.in_padded, 0);
    for (int64_t r = 0; r < rows; ++r) {
      TensorView view{weight.dtype, {dst.in},
                      static_cast<const uint8_t*>(weight.data) + (r0 + r) * dst.in * dtype_size(weight.dtype)};
      to_f32(view, row.data());
      for (int64_t k = 0; k < dst.in; ++k) slab[r * dst.in_padded + k] = f32_to_bf16(row[k]);
    }
    CUDA_CHECK(cudaMemcpy(dst.bf16 + r0 * dst.in_padded, slab.data(), slab.size() * 2, cudaMemcpyHostToDevice));
  }
}

// RoPE frequencies exactly as cpu::Rope computes them.
void upload_rope_frequencies(const ModelConfig& config, DeviceModel& model) {
  std::vector<float> inv_freq(std::max(1, config.rotary_dim / 2), 0.0f);
  for (int j = 0; j < config.rotary_dim / 2; ++j) {
    inv_freq[j] = 1.0f / std::pow(config.rope_theta, static_cast<float>(2 * j) / static_cast<float>(config.rotary_dim));
  }
  CUDA_CHECK(cudaMemcpy(model.inv_freq, inv_freq.data(), inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice));
}

void upload_linear(DeviceLinear& dst, const LinearWeight& src) {
  if (src.out_features() != dst.out || src.in_features() != dst.in) {
    fail("CudaBackend: {} is [{}, {}], the config implies [{}, {}]", src.name, src.out_features(), src.in_features(),
         dst.out, dst.in);
  }
  if (src.nvfp4) upload_nvfp4(dst, *src.nvfp4);
  else upload_dense(dst, src.weight);
  if (dst.bias) upload_f32(dst.bias, src.bias);
}

}  // namespace

std::vector<LinearFormat> linear_formats_of(const ModelWeights& weights, const ModelConfig& config) {
  std::vector<LinearFormat> formats;
  for (const LinearWeight* w : all_linear_layers(weights, config)) {
    formats.push_back({w->nvfp4.has_value(), w->bias.data != nullptr});
  }
  return formats;
}

std::vector<LinearFormat> synthetic_linear_formats(const ModelConfig& config, LinearFormat layers_format) {
  std::vector<LinearFormat> formats;
  for (LayerKind kind : config.layer_kinds) {
    formats.insert(formats.end(), LayerLinearSpecs(config, kind).size(), layers_format);
  }
  formats.push_back({false, false});  // lm_head bf16
  return formats;
}

void layout_device_model(Arena& arena, const ModelConfig& c, const std::vector<LinearFormat>& formats,
                         int64_t lm_head_rows, bool wgmma_tiles, DeviceModel& model) {
  const int64_t dim = c.hidden_size;
  // First, so that in a planning arena (base 0) every later pointer is non-null: `wgmma_tiles != nullptr` then
  // tells which layers have tiles in either pass.
  model.embed_tokens = arena.take<uint16_t>(static_cast<int64_t>(c.vocab_size) * dim);
  model.final_norm = arena.take<float>(dim);
  model.inv_freq = arena.take<float>(std::max(1, c.rotary_dim / 2));
  model.layers.assign(c.num_layers, DeviceLayer{});
  size_t next_format = 0;
  for (int i = 0; i < c.num_layers; ++i) {
    DeviceLayer& layer = model.layers[i];
    layer.kind = c.layer_kinds[i];
    layer.input_norm = arena.take<float>(dim);
    layer.post_attention_norm = arena.take<float>(dim);
    for_each_linear(c, layer, [&](const LinearSpec& spec, DeviceLinear& linear) {
      place_linear(arena, fmt::format("layers.{}.{}", i, spec.module), spec.out_features, spec.in_features,
                   formats.at(next_format++), wgmma_tiles, linear);
    });
    if (layer.kind == LayerKind::FullAttention) {
      if (c.qk_norm) {
        layer.attention.q_norm = arena.take<float>(c.head_dim);
        layer.attention.k_norm = arena.take<float>(c.head_dim);
      }
    } else {
      DeviceGatedDeltaNet& d = layer.delta_net;
      d.conv1d = arena.take<float>(static_cast<int64_t>(c.delta_net_conv_dim()) * c.delta_net_conv_kernel);
      d.dt_bias = arena.take<float>(c.delta_net_num_value_heads);
      d.a_log = arena.take<float>(c.delta_net_num_value_heads);
      d.norm = arena.take<float>(c.delta_net_value_head_dim);
    }
  }
  place_linear(arena, "lm_head", lm_head_rows, dim, formats.at(next_format++), wgmma_tiles, model.lm_head);
  if (next_format != formats.size()) fail("CudaBackend: {} linear formats for {} linear layers", formats.size(), next_format);
}

void upload_device_model(const ModelConfig& config, const ModelWeights& w, DeviceModel& model) {
  const int64_t dim = config.hidden_size;
  {
    std::vector<uint16_t> table(static_cast<int64_t>(config.vocab_size) * dim);
    const std::vector<float> values = to_f32(w.embed_tokens);
    for (size_t i = 0; i < values.size(); ++i) table[i] = f32_to_bf16(values[i]);
    CUDA_CHECK(cudaMemcpy(model.embed_tokens, table.data(), table.size() * 2, cudaMemcpyHostToDevice));
  }
  upload_f32(model.final_norm, w.final_norm);
  upload_rope_frequencies(config, model);
  for (int i = 0; i < config.num_layers; ++i) {
    DeviceLayer& layer = model.layers[i];
    const LayerWeights& src = w.layers[i];
    upload_f32(layer.input_norm, src.input_norm);
    upload_f32(layer.post_attention_norm, src.post_attention_norm);
    for_each_linear(config, layer, [&](const LinearSpec& spec, DeviceLinear& linear) {
      upload_linear(linear, linear_of(src, spec.role));
    });
    if (layer.kind == LayerKind::FullAttention) {
      if (layer.attention.q_norm) upload_f32(layer.attention.q_norm, src.attention.q_norm);
      if (layer.attention.k_norm) upload_f32(layer.attention.k_norm, src.attention.k_norm);
    } else {
      upload_f32(layer.delta_net.conv1d, src.delta_net.conv1d);
      upload_f32(layer.delta_net.dt_bias, src.delta_net.dt_bias);
      upload_f32(layer.delta_net.a_log, src.delta_net.a_log);
      upload_f32(layer.delta_net.norm, src.delta_net.norm);
    }
  }
  upload_linear(model.lm_head, w.lm_head);
}

void fill_device_model_random(const ModelConfig& config, uint64_t seed, cudaStream_t stream, DeviceModel& model) {
  uint64_t next_seed = seed;
  auto fill_f32 = [&](float* p, int64_t n, float low, float high) {
    CUDA_CHECK(cuda::launch_fill_random_f32(p, n, ++next_seed, low, high, stream));
  };
  // Uniform bf16 in +-sqrt(3 / in); NVFP4 codes uniform, scales in [0.5, 0.94], global scale so that
  // elements have rms ~ 1 / sqrt(in).
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
  CUDA_CHECK(cuda::launch_fill_random_bf16(model.embed_tokens, static_cast<int64_t>(config.vocab_size) * dim,
                                           ++next_seed, 1.0f, stream));
  fill_f32(model.final_norm, dim, norm_low, norm_high);
  for (DeviceLayer& layer : model.layers) {
    fill_f32(layer.input_norm, dim, norm_low, norm_high);
    fill_f32(layer.post_attention_norm, dim, norm_low, norm_high);
    if (layer.kind == LayerKind::FullAttention) {
      if (layer.attention.q_norm) fill_f32(layer.attention.q_norm, config.head_dim, norm_low, norm_high);
      if (layer.attention.k_norm) fill_f32(layer.attention.k_norm, config.head_dim, norm_low, norm_high);
    } else {
      fill_f32(layer.delta_net.conv1d, static_cast<int64_t>(config.delta_net_conv_dim()) * config.delta_net_conv_kernel,
               -0.5f, 0.5f);
      fill_f32(layer.delta_net.dt_bias, config.delta_net_num_value_heads, -1.0f, 1.0f);
      fill_f32(layer.delta_net.a_log, config.delta_net_num_value_heads, -1.0f, 0.5f);
      fill_f32(layer.delta_net.norm, config.delta_net_value_head_dim, 0.9f, 1.1f);
    }
  }
  for (DeviceLinear* w : all_linear_layers(model, config)) fill_linear(*w);
  upload_rope_frequencies(config, model);
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

void pack_wgmma_tiles(const ModelConfig& config, cudaStream_t stream, DeviceModel& model) {
  for (DeviceLinear* w : all_linear_layers(model, config)) {
    if (w->wgmma_tiles) CUDA_CHECK(cuda::launch_pack_nvfp4_for_wgmma(w->nvfp4_view(), w->wgmma_tiles, stream));
  }
}

}  // namespace uberlm::gpu
