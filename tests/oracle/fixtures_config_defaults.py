"""Config defaults: for every field config.cpp lets a config.json leave out, a small config of each model
type without that field, and what transformers builds from it, read off the model's modules (head_dim,
KV heads, rotary dim, norm eps, biases, tied embeddings, layer kinds, Gated DeltaNet sizes) and its
resolved config (rope_theta, max_position_embeddings). tests/config_test.cpp parses each config and
must agree on every value."""
import copy
import json
import pathlib

import torch
from transformers import AutoConfig, AutoModelForCausalLM

QWEN3_5_TEXT = {
    "model_type": "qwen3_5_text", "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 96,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 128, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 1024, "tie_word_embeddings": True, "attention_bias": True, "full_attention_interval": 2,
    "linear_num_key_heads": 2, "linear_num_value_heads": 32, "linear_key_head_dim": 16, "linear_value_head_dim": 8,
    "linear_conv_kernel_dim": 3,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
}
DENSE = {
    "hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 96, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 16, "vocab_size": 128, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 1024, "tie_word_embeddings": True, "attention_bias": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}
DENSE_FIELDS = ["num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
                "attention_bias", "rope_parameters.rope_theta", "rope_parameters"]
QWEN3_5_FIELDS = ["num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
                  "tie_word_embeddings", "attention_bias", "full_attention_interval", "linear_num_key_heads",
                  "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
                  "rope_parameters.rope_theta", "rope_parameters.partial_rotary_factor", "rope_parameters"]


def without(config: dict, field: str) -> dict:
    config = copy.deepcopy(config)
    if "." in field:
        outer, inner = field.split(".")
        del config[outer][inner]
    else:
        del config[field]
    return config


def built(config: dict) -> dict:
    """What transformers runs for `config`."""
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **kwargs), dtype=torch.float32)
    resolved = model.config.get_text_config()
    layers = model.model.layers
    attention = next(layer.self_attn for layer in layers if hasattr(layer, "self_attn"))
    head_dim = attention.head_dim
    q_rows = attention.q_proj.out_features
    heads = resolved.num_attention_heads
    out = {
        "head_dim": head_dim,
        "num_key_value_heads": attention.k_proj.out_features // head_dim,
        "attn_output_gate": q_rows == 2 * heads * head_dim,
        "rotary_dim": 2 * model.model.rotary_emb.inv_freq.numel(),
        "rope_theta": resolved.rope_parameters["rope_theta"],
        "rms_norm_eps": model.model.norm.variance_epsilon if hasattr(model.model.norm, "variance_epsilon")
        else model.model.norm.eps,
        "qkv_bias": attention.q_proj.bias is not None,
        "o_bias": attention.o_proj.bias is not None,
        "tie_word_embeddings": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "max_position_embeddings": resolved.max_position_embeddings,
        "layer_kinds": ["full_attention" if hasattr(layer, "self_attn") else "linear_attention" for layer in layers],
    }
    delta_net = next((layer.linear_attn for layer in layers if hasattr(layer, "linear_attn")), None)
    if delta_net is not None:
        out.update({"linear_num_key_heads": delta_net.num_k_heads, "linear_num_value_heads": delta_net.num_v_heads,
                    "linear_key_head_dim": delta_net.head_k_dim, "linear_value_head_dim": delta_net.head_v_dim,
                    "linear_conv_kernel_dim": delta_net.conv_kernel_size})
    return out


def make(out: pathlib.Path) -> None:
    cases = []
    bases = [(QWEN3_5_TEXT, QWEN3_5_FIELDS)] + [({"model_type": t, **DENSE}, DENSE_FIELDS)
                                                for t in ("llama", "qwen2", "qwen3")]
    for base, fields in bases:
        for field in fields:
            config = without(base, field)
            cases.append({"model_type": base["model_type"], "dropped": field, "config": config,
                          "transformers": built(config)})
    # The multimodal layout: the text model under text_config, without partial_rotary_factor.
    nested = {"model_type": "qwen3_5", "text_config": without(QWEN3_5_TEXT, "rope_parameters.partial_rotary_factor")}
    cases.append({"model_type": "qwen3_5", "dropped": "text_config.rope_parameters.partial_rotary_factor",
                  "config": nested, "transformers": built(nested)})
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"  {len(cases)} configs, each without one defaulted field")
