"""Tiny random checkpoints with reference logits from HF transformers, for the C++ oracle tests.

For each model NAME this writes out/NAME/: config.json, generation_config.json, the bf16 weights,
model_info.json (model_type, layer kinds: for the C++ tests' messages) and reference.safetensors:
  prompt_ids     I32 [P]     P = 70 random ids, so the prefill crosses the 64-token GDN chunk
  prefill_logits F32 [P, V]  one forward over the prompt
  decode_ids     I32 [16]    greedy: decode_ids[0] = argmax(prefill_logits[-1])
  decode_logits  F32 [16, V] decode_logits[i] = logits after feeding decode_ids[i] through the cache,
                             decode_ids[i+1] = argmax(decode_logits[i])
Weights are drawn so that activations stay O(1) and logits spread (transformers' std 0.02 init gives
near-flat logits and a weak test), rounded to bf16 and saved as bf16; references come from the saved
checkpoint run by transformers in float64 with eager attention (common_float64.py), so the 1e-4 bound
of the C++ tests holds our fp32 engine's own error whatever CPU or torch release made the fixture. Every model also checks that its logits spread, that greedy decode does not loop on one token,
and that each greedy choice wins by more than the oracle tolerance.

Two hybrids share one config. qwen3_5_hybrid has wide draws (fast GDN decays, large conv and norm weights)
that stress the fp32 math; it amplifies rounding about 30x: bf16-rounding the input of every linear layer
moves its logits by up to 1.2e-1 (prefill) and 3.7e-1 (decode), so it cannot carry the GPU's bf16 check.
qwen3_5_conditioned draws as real checkpoints are initialised (GDN decays from transformers' init, small
conv and norm deviations, linear gain 0.7); the same rounding moves it by 7.9e-3 / 7.6e-3, as much as the
dense fixtures (6.5e-3 to 1.25e-2), and the GPU test holds it to 2e-2.
"""
import dataclasses
import json
import math
import pathlib
import shutil
import warnings

import torch
from common_float64 import Float64Everywhere, in_float64
from safetensors.torch import load_file, save_file
import transformers
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3_5ForCausalLM,
    Qwen3_5TextConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

PROMPT_LEN = 70
DECODE_STEPS = 16
ORACLE_RELATIVE_TOLERANCE = 1e-4  # the C++ oracle tests' bound on max|ours - ref| / max|ref|
LM_HEAD_GAIN = 3.0  # logits std ~3: greedy argmax is decided by clear margins, not by rounding noise

HYBRID_LAYERS = ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]


def hybrid_config() -> Qwen3_5TextConfig:
    return Qwen3_5TextConfig(
        vocab_size=397,
        hidden_size=72,
        intermediate_size=100,
        num_hidden_layers=len(HYBRID_LAYERS),
        layer_types=HYBRID_LAYERS,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=24,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=20,
        linear_value_head_dim=12,
        linear_conv_kernel_dim=4,
        rms_norm_eps=1e-6,
        # As in the real checkpoints: interleaved MRoPE, which equals plain RoPE for text. Rotary dim 24 * 0.25 = 6.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_interleaved": True,
            "mrope_section": [1, 1, 1],
        },
        attn_output_gate=True,
        tie_word_embeddings=False,
    )


def qwen3_config() -> Qwen3Config:
    # head_dim 24 != hidden / heads (80 / 5) on purpose: the engine must read head_dim, not derive it.
    return Qwen3Config(
        vocab_size=353,
        hidden_size=80,
        intermediate_size=136,
        num_hidden_layers=3,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=24,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
    )


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=419,
        hidden_size=96,
        intermediate_size=164,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
    )


def qwen2_config() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=311,
        hidden_size=56,
        intermediate_size=92,
        num_hidden_layers=3,
        num_attention_heads=7,
        num_key_value_heads=1,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        use_sliding_window=False,
        tie_word_embeddings=False,
    )


@dataclasses.dataclass(frozen=True)
class Draws:
    """How the random weights are drawn. linear_gain: linear weights ~ N(0, gain^2 / in_features);
    conv_std, norm_std: the conv1d taps' and the norms' deviation (from 0 for zero-centred norms, else 1);
    checkpoint_decay: GDN decays as transformers initialises them (A ~ U(1, 16), dt_bias = softplus^-1(dt),
    dt log-uniform in [1e-3, 1e-1]: slow decays) instead of A ~ U(0.05, 8), dt_bias ~ N(0, 1)."""
    linear_gain: float
    conv_std: float
    norm_std: float
    checkpoint_decay: bool


# At linear gain 1.6 one hybrid position was so ill-conditioned that fp32 transformers itself missed fp64 by 1e-4.
WIDE_DRAWS = Draws(linear_gain=1.0, conv_std=0.5, norm_std=0.3, checkpoint_decay=False)
# Measured by bf16-rounding every linear layer's input in transformers (see the module docstring).
BF16_STABLE_DRAWS = Draws(linear_gain=0.7, conv_std=0.2, norm_std=0.05, checkpoint_decay=True)


def is_zero_centred_norm(name: str, zero_centred: bool) -> bool:
    # Qwen3.5 applies (1 + w) in every RMSNorm except the gated one inside the GDN mixer.
    return zero_centred and name.endswith("norm.weight") and ".linear_attn.norm." not in name


def draw_parameter(name: str, shape: torch.Size, zero_centred: bool, tied: bool, gen: torch.Generator,
                   draws: Draws = WIDE_DRAWS) -> torch.Tensor:
    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    if name.endswith("A_log"):
        if draws.checkpoint_decay:
            return torch.log(1.0 + 15.0 * torch.rand(shape, generator=gen))
        # A in U(0.05, 8): a mix of slow heads (state carried across the chunk boundary) and fast ones.
        return torch.log(0.05 + 7.95 * torch.rand(shape, generator=gen))
    if name.endswith("dt_bias"):
        if draws.checkpoint_decay:
            dt = torch.exp(math.log(1e-3) + torch.rand(shape, generator=gen) * (math.log(1e-1) - math.log(1e-3)))
            return dt + torch.log(-torch.expm1(-dt))
        return normal(1.0)
    if name.endswith("conv1d.weight"):
        return normal(draws.conv_std)
    if name.endswith("norm.weight"):
        deviation = normal(draws.norm_std)
        return deviation if is_zero_centred_norm(name, zero_centred) else 1.0 + deviation
    if name.endswith("embed_tokens.weight"):
        # Tied: the embedding is also the lm_head, scaled as one; the first norm undoes its scale anyway.
        return normal(LM_HEAD_GAIN / math.sqrt(shape[1]) if tied else 1.0)
    if name.endswith(".bias"):
        return normal(0.5)
    if name.endswith("lm_head.weight"):
        return normal(LM_HEAD_GAIN / math.sqrt(shape[1]))
    if len(shape) == 2:
        return normal(draws.linear_gain / math.sqrt(shape[1]))
    raise ValueError(f"fixtures_models: no draw rule for parameter {name} {tuple(shape)}")


def build_random_model(model_class, config, zero_centred: bool, seed: int,
                       draws: Draws = WIDE_DRAWS) -> torch.nn.Module:
    config._attn_implementation = "eager"
    model = model_class(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = draw_parameter(name, param.shape, zero_centred, config.tie_word_embeddings, gen, draws)
            # Round to bf16 so the saved bf16 weights are exactly the weights the reference ran with.
            param.copy_(value.to(torch.bfloat16).to(torch.float32))
    return model


def greedy_reference(model: torch.nn.Module, prompt_ids: torch.Tensor,
                     decode_steps: int = DECODE_STEPS) -> dict[str, torch.Tensor]:
    # prompt_ids: [P] -> prefill logits [P, V]; then decode_steps single-token steps through the cache.
    # Computed in float64 (common_float64.py says why; the model is converted in place), saved as float32.
    model = in_float64(model)
    cache = DynamicCache(config=model.config)
    # `past_key_values` (renamed `cache` in recent releases) is the name every transformers 5.x accepts.
    with torch.no_grad(), warnings.catch_warnings(), Float64Everywhere():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        out = model(input_ids=prompt_ids[None, :], past_key_values=cache, use_cache=True)
        prefill_logits = out.logits[0]
        decode_ids = [int(prefill_logits[-1].argmax())]
        decode_logits = []
        for step in range(decode_steps):
            token = torch.tensor([[decode_ids[step]]], dtype=torch.long)
            logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits[0, -1]
            decode_logits.append(logits)
            if step + 1 < decode_steps:
                decode_ids.append(int(logits.argmax()))
    return {
        "prompt_ids": prompt_ids.to(torch.int32).contiguous(),
        "prefill_logits": prefill_logits.to(torch.float32).contiguous(),
        "decode_ids": torch.tensor(decode_ids, dtype=torch.int32),
        "decode_logits": torch.stack(decode_logits).to(torch.float32).contiguous(),
    }


def check_reference(name: str, ref: dict[str, torch.Tensor]) -> None:
    prefill, decode_ids = ref["prefill_logits"], ref["decode_ids"]
    spread = float((prefill.max(dim=-1).values - prefill.min(dim=-1).values).min())
    distinct = len(set(decode_ids.tolist()))
    # The rows whose argmax picks a greedy token. Any engine within the oracle tolerance
    # (max|ours - ref| <= 1e-4 max|ref|) must pick the same tokens, so each top-2 gap must exceed twice it.
    choosing = torch.cat([prefill[-1:], ref["decode_logits"][:-1]])
    top2 = choosing.topk(2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    needed = 2 * ORACLE_RELATIVE_TOLERANCE * float(torch.cat([prefill, ref["decode_logits"]]).abs().max())
    print(f"  {name}: min per-position logit spread {spread:.2f}, min greedy top-2 gap {margin:.3f} "
          f"(needs > {needed:.4f}), {distinct} distinct of {len(decode_ids)} greedy tokens: {decode_ids.tolist()}")
    if spread < 5.0:
        raise RuntimeError(f"fixtures_models: {name} logits are too flat (spread {spread:.2f})")
    if distinct < 4:
        raise RuntimeError(f"fixtures_models: {name} greedy decode repeats itself ({decode_ids.tolist()})")
    if margin <= needed:
        raise RuntimeError(f"fixtures_models: {name} greedy top-2 gap {margin:.2e} is within the test tolerance")


def check_decode_matches_full_forward(name: str, model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> None:
    # The cached decode (recurrent GDN rule, KV cache) must equal one uncached forward over prompt + decoded
    # tokens (chunked GDN rule): otherwise the reference itself is ambiguous at the oracle tolerance.
    ids = torch.cat([ref["prompt_ids"], ref["decode_ids"]]).long()
    with torch.no_grad(), Float64Everywhere():
        full = in_float64(model)(input_ids=ids[None, :], use_cache=False).logits[0, PROMPT_LEN:]
    full = full.to(torch.float32)
    error = float((full - ref["decode_logits"]).abs().max() / ref["decode_logits"].abs().max())
    print(f"  {name}: cached decode vs full forward, max relative difference {error:.1e}")
    if error > 1e-5:
        raise RuntimeError(f"fixtures_models: {name} cached decode differs from a full forward by {error:.1e}")


def write_generation_config(folder: pathlib.Path, vocab_size: int, decode_ids: torch.Tensor) -> None:
    # A stop id that greedy decode never reaches, so the engine decodes all the reference steps.
    eos = next(i for i in range(vocab_size - 1, 0, -1) if i not in set(decode_ids.tolist()))
    config = {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": None, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_model_info(folder: pathlib.Path, model_type: str, layer_kinds: list[str]) -> None:
    info = {"model_type": model_type, "num_layers": len(layer_kinds), "layer_kinds": layer_kinds}
    (folder / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")


def make_flat_model(out: pathlib.Path, name: str, model_class, config, zero_centred: bool, seed: int,
                    draws: Draws = WIDE_DRAWS) -> pathlib.Path:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    model = build_random_model(model_class, config, zero_centred, seed, draws)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)

    reloaded = model_class.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed + 1)
    prompt_ids = torch.randint(0, config.vocab_size, (PROMPT_LEN,), generator=gen)
    ref = greedy_reference(reloaded, prompt_ids)
    check_reference(name, ref)
    check_decode_matches_full_forward(name, reloaded, ref)
    save_file(ref, str(folder / "reference.safetensors"))
    write_generation_config(folder, config.vocab_size, ref["decode_ids"])
    layer_kinds = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
    write_model_info(folder, config.model_type, layer_kinds)
    return folder


def dummy_skipped_tensors(gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    # Shapes and dtypes that fit nothing in the text model: a loader that reads them instead of skipping fails.
    visual = {
        "model.visual.patch_embed.proj.weight": torch.randn(16, 3, 2, 4, 4, generator=gen).to(torch.bfloat16),
        "model.visual.blocks.0.attn.qkv.weight": torch.randn(48, 16, generator=gen).to(torch.bfloat16),
        "model.visual.merger.linear_fc1.bias": torch.randn(64, generator=gen),
    }
    mtp = {
        "mtp.fc.weight": torch.randn(72, 144, generator=gen).to(torch.bfloat16),
        "mtp.layers.0.input_layernorm.weight": torch.randn(72, generator=gen).to(torch.bfloat16),
        "mtp.norm.weight": torch.randn(72, generator=gen),
    }
    return {"visual": visual, "mtp": mtp}


def make_nested_hybrid(out: pathlib.Path, flat: pathlib.Path, text_config: Qwen3_5TextConfig, seed: int):
    """The hybrid's weights laid out as a multimodal Qwen3.5 checkpoint: nested config, language_model
    prefix, vision and MTP tensors to skip, two shards with an index."""
    folder = out / "qwen3_5_nested"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    # The layout of the real Qwen3.5 config.json: the text model's fields under text_config, with the keys
    # the engine must ignore (mtp, mamba_ssm_dtype) and a full_attention_interval that layer_types overrides.
    text = json.loads((flat / "config.json").read_text())
    text.pop("architectures")
    text.update({"full_attention_interval": 4, "mtp_num_hidden_layers": 1, "mamba_ssm_dtype": "float32"})
    vocab = text_config.vocab_size
    full = {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": text,
        "vision_config": {"model_type": "qwen3_5_vision", "depth": 1, "hidden_size": 16, "intermediate_size": 32,
                          "num_heads": 2, "patch_size": 4, "out_hidden_size": 72},
        "image_token_id": vocab - 3,
        "video_token_id": vocab - 4,
        "vision_start_token_id": vocab - 5,
        "vision_end_token_id": vocab - 6,
        "tie_word_embeddings": False,
        "transformers_version": text.pop("transformers_version"),
    }
    (folder / "config.json").write_text(json.dumps(full, indent=2) + "\n")

    weights = load_file(str(flat / "model.safetensors"))
    renamed = {(name if name == "lm_head.weight" else "model.language_model." + name.removeprefix("model.")): t
               for name, t in weights.items()}
    names = sorted(renamed)
    dummies = dummy_skipped_tensors(torch.Generator().manual_seed(seed))
    shards = [
        {**{n: renamed[n] for n in names[: len(names) // 2]}, **dummies["visual"]},
        {**{n: renamed[n] for n in names[len(names) // 2:]}, **dummies["mtp"]},
    ]
    weight_map, total_size = {}, 0
    for index, shard in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.contiguous() for n, t in shard.items()}, str(folder / file_name), metadata={"format": "pt"})
        for tensor_name, tensor in shard.items():
            weight_map[tensor_name] = file_name
            total_size += tensor.numel() * tensor.element_size()
    index_json = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")

    for shared in ("generation_config.json", "reference.safetensors"):
        shutil.copyfile(flat / shared, folder / shared)
    write_model_info(folder, "qwen3_5", list(text_config.layer_types))
    check_transformers_reads_nested(folder)


def check_transformers_reads_nested(folder: pathlib.Path) -> None:
    # transformers loads the text model out of the multimodal layout; its logits must be the hybrid's.
    model = Qwen3_5ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ref = load_file(str(folder / "reference.safetensors"))
    with torch.no_grad(), Float64Everywhere():
        logits = in_float64(model)(input_ids=ref["prompt_ids"].long()[None, :]).logits[0]
    error = float((logits.to(torch.float32) - ref["prefill_logits"]).abs().max())
    if error > 1e-5:
        raise RuntimeError(f"fixtures_models: transformers reads {folder} differently from the flat hybrid ({error})")


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    transformers.utils.logging.set_verbosity_error()  # no notes on the slow torch GDN fallback, which we want
    transformers.utils.logging.disable_progress_bar()
    hybrid = hybrid_config()
    hybrid_folder = make_flat_model(out, "qwen3_5_hybrid", Qwen3_5ForCausalLM, hybrid, True, seed=35)
    make_nested_hybrid(out, hybrid_folder, hybrid, seed=36)
    make_flat_model(out, "qwen3_5_conditioned", Qwen3_5ForCausalLM, hybrid, True, seed=41, draws=BF16_STABLE_DRAWS)
    make_flat_model(out, "qwen3", Qwen3ForCausalLM, qwen3_config(), False, seed=5)
    make_flat_model(out, "llama", LlamaForCausalLM, llama_config(), False, seed=8)
    make_flat_model(out, "qwen2", Qwen2ForCausalLM, qwen2_config(), False, seed=4)
