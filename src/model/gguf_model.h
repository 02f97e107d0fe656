#pragma once
// A llama-architecture model from a GGUF file (llama.cpp's format): the config from the `llama.*`
// metadata, the weights dequantised to fp32 buffers the Model owns, mapped to our canonical layout:
//   token_embd -> embed_tokens, output_norm -> norm, output -> lm_head (tied when absent),
//   blk.N.attn_norm / ffn_norm -> input_layernorm / post_attention_layernorm,
//   blk.N.attn_q / attn_k / attn_v / attn_output -> q_proj / k_proj / v_proj / o_proj,
//   blk.N.ffn_gate / ffn_up / ffn_down -> gate_proj / up_proj / down_proj.
// llama.cpp's converter permutes the rows of attn_q and attn_k (its rotary pairs dims (2j, 2j+1) of a
// head, Hugging Face's rotate_half pairs (j, j + head_dim/2)); the loader undoes that permutation, as
// transformers' GGUF loader does, so our NeoX-style RoPE applies unchanged.
#include <filesystem>
#include <memory>

#include "io/gguf.h"
#include "model/config.h"
#include "model/model.h"

namespace uberlm {

// True for a path naming a .gguf file (Model::load's dispatch).
bool is_gguf_path(const std::filesystem::path& path);

// Throws Error naming the file and key when the architecture is not llama or a field is missing,
// mistyped or unsupported (rope scaling, partial rotary).
ModelConfig gguf_model_config(const GgufFile& gguf);

// Throws Error naming the file and tensor when one is missing, has the wrong shape or a type we cannot
// dequantise, or when the file holds a tensor the llama graph does not use.
std::unique_ptr<Model> load_gguf_model(const std::filesystem::path& file);

}  // namespace uberlm
