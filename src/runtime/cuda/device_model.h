#pragma once
// The model on the GPU, as plain structs that mirror model/weights.h member for member, so the one list of
// linear layers (model/layer_linears.h, all_linear_layers) walks both: weights in one device allocation,
// constant after load.
// Linear layers are padded along K to kGemvKMultiple (zero codes and scales for NVFP4, zero bf16), so the
// GEMV needs no bounds on K; activations are padded the same way (StepBuffers).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/nvfp4.h"
#include "ops/cuda/gemm_nvfp4_wgmma.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/cuda/arena.h"

namespace uberlm::gpu {

// A linear layer: bf16 [out, in_padded] or NVFP4 [out, in_padded], optional fp32 bias.
struct DeviceLinear {
  std::string name;
  int64_t out = 0, in = 0, in_padded = 0;
  bool nvfp4 = false;
  uint16_t* bf16 = nullptr;
  uint8_t* packed = nullptr;
  uint8_t* scales = nullptr;
  float global_scale = 0;
  float* bias = nullptr;
  // The same NVFP4 weight in the small-M GEMM's fragment order (ops/cuda/nvfp4_wgmma_layout.h), for 17..128-row
  // products on Hopper; null where the model is placed without it or the shape is not a multiple of 64.
  uint8_t* wgmma_tiles = nullptr;

  int64_t bytes() const { return nvfp4 ? out * in_padded / 2 + out * in_padded / 16 : out * in_padded * 2; }
  // Codes in the GEMV's tiled order (upload repacks them; random ones are random in any order).
  Nvfp4Weight nvfp4_view() const {
    return {out, in_padded, packed, scales, global_scale, 0.0f, Nvfp4CodeOrder::GemvTiled};
  }
  cuda::Nvfp4WgmmaWeight wgmma_view() const { return {out, in_padded, wgmma_tiles, global_scale}; }
};

struct DeviceAttention {
  DeviceLinear q_proj, k_proj, v_proj, o_proj;
  float *q_norm = nullptr, *k_norm = nullptr;  // fp32 [head_dim] when config.qk_norm
};

struct DeviceGatedDeltaNet {
  DeviceLinear in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj;
  float *conv1d = nullptr;  // fp32 [conv_dim, kernel]
  float *dt_bias = nullptr, *a_log = nullptr;  // fp32 [num_v_heads]
  float *norm = nullptr;    // fp32 [v_head_dim], the gated norm's weight
};

struct DeviceMlp {
  DeviceLinear gate_proj, up_proj, down_proj;
};

struct DeviceLayer {
  LayerKind kind = LayerKind::FullAttention;
  float *input_norm = nullptr, *post_attention_norm = nullptr;  // fp32 [D]
  DeviceAttention attention;    // when kind == FullAttention
  DeviceGatedDeltaNet delta_net;  // when kind == GatedDeltaNet
  DeviceMlp mlp;
};

struct DeviceModel {
  uint16_t* embed_tokens = nullptr;  // bf16 [V, D]
  float* final_norm = nullptr;       // fp32 [D]
  float* inv_freq = nullptr;         // fp32 [rotary_dim / 2], RoPE frequencies as cpu::Rope computes them
  // [lm_head_rows, D]: V rows, or with tensor parallelism this rank's ceil(V / ranks) vocabulary slice.
  DeviceLinear lm_head;
  std::vector<DeviceLayer> layers;
};

// What each linear layer's weights are (NVFP4 or bf16, a bias or not), in all_linear_layers order.
struct LinearFormat {
  bool nvfp4 = false;
  bool bias = false;
};
std::vector<LinearFormat> linear_formats_of(const ModelWeights& weights, const ModelConfig& config);
// Every decoder linear layer in `layers_format`, lm_head bf16: the synthetic models of `bench` and `serve --shape`.
std::vector<LinearFormat> synthetic_linear_formats(const ModelConfig& config, LinearFormat layers_format);

// Places every weight of `model` in `arena` (a planning arena only adds up the bytes); with wgmma_tiles, also the
// fragment tiles of every NVFP4 layer whose shape has them.
void layout_device_model(Arena& arena, const ModelConfig& config, const std::vector<LinearFormat>& formats,
                         int64_t lm_head_rows, bool wgmma_tiles, DeviceModel& model);
// Copies the checkpoint's weights into the placed model (shapes checked against the config).
void upload_device_model(const ModelConfig& config, const ModelWeights& weights, DeviceModel& model);
// Random weights of unit-variance-preserving magnitude, made on the GPU (synthetic shapes).
void fill_device_model_random(const ModelConfig& config, uint64_t seed, cudaStream_t stream, DeviceModel& model);
// After either: the fragment tiles of the layers that have them, made from their loaded weights on the GPU.
void pack_wgmma_tiles(const ModelConfig& config, cudaStream_t stream, DeviceModel& model);

}  // namespace uberlm::gpu
