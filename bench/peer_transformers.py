#!/usr/bin/env python3
"""Peer figure for `uberlm bench`: HF transformers' Qwen3_5ForCausalLM with random bf16 weights at the same
shape on the same GPU, eager PyTorch (whatever kernels this transformers install picks: with the
flash-linear-attention package importable, e.g. its pure-Python wheels fla-core, flash-linear-attention and
einops on PYTHONPATH, its Triton chunked delta rule; without it the torch fallback). The report names which.

Measures decode tokens/s at each batch (after a prompt of --context tokens, median over --steps steps) and
prefill of each length. When the full depth does not fit in GPU memory, it halves the layer count until it
does and reports the layers it ran (and tokens/s scaled to the full depth, linear in layers).

    python3 bench/peer_transformers.py --shape qwen3.5-27b --json OUT.json
"""
import argparse
import importlib.metadata
import json
import statistics
import time

import torch
import transformers
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

# The shapes of uberlm bench (src/cli/bench_command.cpp).
SHAPES = {
    "qwen3.5-27b": dict(hidden_size=5120, num_hidden_layers=64, intermediate_size=17408, num_attention_heads=24,
                        num_key_value_heads=4, linear_num_key_heads=16, linear_num_value_heads=48),
    "qwen3.5-9b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=12288, num_attention_heads=16,
                       num_key_value_heads=4, linear_num_key_heads=16, linear_num_value_heads=32),
}


def make_config(shape: str, layers: int) -> Qwen3_5TextConfig:
    fields = dict(SHAPES[shape])
    fields["num_hidden_layers"] = layers
    return Qwen3_5TextConfig(vocab_size=248320, head_dim=256, linear_key_head_dim=128, linear_value_head_dim=128,
                             linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=8192,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
                             tie_word_embeddings=False, **fields)


def build_model(shape: str, layers: int):
    torch.manual_seed(0)
    config = make_config(shape, layers)
    with torch.device("cuda"):
        model = Qwen3_5ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.eval()
    return model


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


@torch.inference_mode()
def decode_tokens_per_s(model, batch: int, context: int, steps: int, vocab: int) -> dict:
    prompt = torch.randint(0, vocab, (batch, context), device="cuda")
    out = model(input_ids=prompt, use_cache=True)
    cache = out.past_key_values
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    seconds = []
    for step in range(steps + 3):
        elapsed, out = timed(lambda: model(input_ids=token, past_key_values=cache, use_cache=True))
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        if step >= 3:
            seconds.append(elapsed)
    step = statistics.median(seconds)
    return {"batch": batch, "ms_per_step": 1e3 * step, "tokens_per_s": batch / step}


@torch.inference_mode()
def prefill_tokens_per_s(model, length: int, vocab: int) -> dict:
    prompt = torch.randint(0, vocab, (1, length), device="cuda")
    seconds = []
    for _ in range(3):
        elapsed, _ = timed(lambda: model(input_ids=prompt, use_cache=True, logits_to_keep=1))
        seconds.append(elapsed)
    t = statistics.median(seconds)
    return {"tokens": length, "ms": 1e3 * t, "tokens_per_s": length / t}


def flash_linear_attention_version():
    """The flash-linear-attention version transformers' Gated DeltaNet uses, or None (the torch fallback)."""
    from transformers.utils.import_utils import is_flash_linear_attention_available
    return importlib.metadata.version("flash-linear-attention") if is_flash_linear_attention_available() else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen3.5-27b", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prefill", default="2048")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()

    full_layers = SHAPES[args.shape]["num_hidden_layers"]
    layers = full_layers
    while True:
        try:
            model = build_model(args.shape, layers)
            break
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if layers <= 4:
                raise
            layers //= 2
            print(f"out of GPU memory at {layers * 2} layers; trying {layers}", flush=True)
    vocab = model.config.vocab_size
    scale = layers / full_layers  # tokens/s at full depth ~ measured * layers / full_layers (linear in depth)
    report = {"peer": "transformers Qwen3_5ForCausalLM, random bf16 weights, eager", "transformers": transformers.__version__,
              "torch": torch.__version__, "flash_linear_attention": flash_linear_attention_version(),
              "gpu": torch.cuda.get_device_name(0), "shape": args.shape,
              "layers_run": layers, "layers_full": full_layers, "decode": [], "prefill": []}
    for batch in [int(b) for b in args.batches.split(",") if b]:
        try:
            row = decode_tokens_per_s(model, batch, args.context, args.steps, vocab)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            row = {"batch": batch, "error": "out of GPU memory"}
        if "tokens_per_s" in row:
            row["tokens_per_s_full_depth_estimate"] = row["tokens_per_s"] * scale
        report["decode"].append(row)
        print(json.dumps(row), flush=True)
    for length in [int(p) for p in args.prefill.split(",") if p]:
        try:
            row = prefill_tokens_per_s(model, length, vocab)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            row = {"tokens": length, "error": "out of GPU memory"}
        if "tokens_per_s" in row:
            row["tokens_per_s_full_depth_estimate"] = row["tokens_per_s"] * scale
        report["prefill"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
