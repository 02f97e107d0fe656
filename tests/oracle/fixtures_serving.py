"""A tiny random Qwen3.5 hybrid checkpoint with a real tokenizer, for the server tests.

The oracle models have vocabularies of a few hundred ids and no tokenizer.json; a server needs text
in and out, so this writes out/qwen3_5_chat/: a byte-level BPE tokenizer trained as in
fixtures_tokenizer.py (Qwen's split pattern, <|endoftext|> <|im_start|> <|im_end|> specials), and a
random 4-layer hybrid (3 Gated DeltaNet layers, 1 gated-attention layer) whose vocab_size equals the
tokenizer's, with eos = <|endoftext|> and <|im_end|>. Weights are drawn like the oracle models' so the
logits spread and greedy outputs differ from prompt to prompt.
"""
import json
import pathlib
import shutil

import torch
import transformers
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

import fixtures_models
import fixtures_tokenizer

LAYERS = ["linear_attention"] * 3 + ["full_attention"]


def make(out: pathlib.Path) -> None:
    torch.set_num_threads(2)
    transformers.utils.logging.set_verbosity_error()
    folder = out / "qwen3_5_chat"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    fixtures_tokenizer.train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(fixtures_tokenizer.QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]), normalizers.NFC(), folder / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    eos = [tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|im_end|>")]

    config = Qwen3_5TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=len(LAYERS),
        layer_types=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                         "mrope_interleaved": True, "mrope_section": [2, 1, 1]},
        attn_output_gate=True,
        tie_word_embeddings=False,
        eos_token_id=eos,
    )
    model = fixtures_models.build_random_model(Qwen3_5ForCausalLM, config, zero_centred=True, seed=77)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    generation = {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": None, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    print(f"  qwen3_5_chat: vocab {vocab_size}, eos {eos}")
