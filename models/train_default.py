#!/usr/bin/env python3
"""Trains uberlm's default model: a small Qwen3.5 hybrid (3 Gated DeltaNet : 1 gated attention) on GSM8K.

    python3 models/train_default.py --data DIR --out OUTDIR [--minutes 7] [--tiny]

DIR holds GSM8K's train.jsonl and test.jsonl. Each example is formatted as the later eval prompt is:
    "Q: {question}\\nA: Let me solve this step by step.\\n{answer}<|endoftext|>"
Steps: a byte-level BPE tokenizer with the Qwen3.5 pipeline trained on the train text; a ~18M-parameter
Qwen3_5ForCausalLM; AdamW with a cosine schedule over a wall-clock budget (or an epoch cap, whichever ends
first) on packed 512-token sequences in bf16 autocast; the checkpoint with the best loss on a validation
split of train is kept. OUTDIR gets the bf16 checkpoint (shards under 15 MB), tokenizer.json,
generation_config.json, train_log.txt and metrics.json: at most 8 files (with 3 shards, train_log.txt
and metrics.json go into train_report.tar). Needs only torch, transformers, tokenizers, numpy and the
stdlib; no network.
"""
import argparse
import json
import math
import pathlib
import random
import shutil
import tarfile
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

ANSWER_LEAD = "A: Let me solve this step by step.\n"
END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# The Qwen3.5 pre-tokenizer regex (spec/qwen3_5.md).
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
VALIDATION_EXAMPLES = 256  # held out of train: picks the checkpoint, so GSM8K test stays unseen by every choice
MAX_SHARD_BYTES = 14 * 1000 * 1000
MAX_OUTPUT_FILES = 8  # what the GPU machine's tool hands back
REPORT_TAR = "train_report.tar"
SAMPLE_PROMPTS = [
    "Q: Natalia sold clips to",
    "Q: A bakery sells 12 muffins in the morning and",
]


class Log:
    """Prints and appends to train_log.txt."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        path.write_text("")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with self.path.open("a") as file:
            file.write(line + "\n")


def format_example(example: dict) -> str:
    return f"Q: {example['question']}\n{ANSWER_LEAD}{example['answer']}{END_OF_TEXT}"


def read_jsonl(path: pathlib.Path) -> list[dict]:
    with path.open() as file:
        return [json.loads(line) for line in file if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    specials = [END_OF_TEXT, IM_START, IM_END]
    # Specials are added after training, so they take the last ids as in Qwen's vocabulary.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((t.removesuffix(END_OF_TEXT) for t in texts), trainer=trainer)
    tokenizer.add_special_tokens(specials)
    return tokenizer


def encode_examples(tokenizer: Tokenizer, texts: list[str], eos_id: int) -> list[list[int]]:
    encoded = [e.ids for e in tokenizer.encode_batch(texts)]
    for ids, text in zip(encoded, texts):
        if ids[-1] != eos_id:
            raise RuntimeError(f"tokenizer did not end with {END_OF_TEXT}: {text[-60:]!r}")
    return encoded


def pack(examples: list[list[int]], order: list[int], seq_len: int) -> torch.Tensor:
    # -> [num_sequences, seq_len + 1]: one stream of the examples in `order`, cut into windows that
    # overlap by one token so that every token is a target once.
    stream = np.fromiter((t for i in order for t in examples[i]), dtype=np.int64)
    count = (len(stream) - 1) // seq_len
    starts = np.arange(count) * seq_len
    windows = stream[starts[:, None] + np.arange(seq_len + 1)[None, :]]
    return torch.from_numpy(windows)


def model_config(tiny: bool, vocab_size: int, eos_id: int) -> Qwen3_5TextConfig:
    if tiny:
        sizes = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                     linear_key_head_dim=32, linear_value_head_dim=32)
    else:
        sizes = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                     num_key_value_heads=2, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
                     linear_key_head_dim=64, linear_value_head_dim=64)
    layers = sizes["num_hidden_layers"]
    return Qwen3_5TextConfig(
        vocab_size=vocab_size,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        linear_conv_kernel_dim=4,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        attn_output_gate=True,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **sizes,
    )


def cosine_lr(progress: float, peak: float, warmup: float) -> float:
    # progress in [0, 1]: linear warmup to `peak`, then cosine down to peak / 10.
    if progress < warmup:
        return peak * progress / warmup
    x = min(1.0, (progress - warmup) / (1.0 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * x)))


@torch.no_grad()
def example_nll(model, examples: list[list[int]], device: str, batch_size: int, bf16: bool) -> tuple[float, int]:
    """Sum of -log p(token | its example's prefix) over every token after the first of each example, and the
    count of those tokens. Each example stands alone (no packing); right padding is causal-safe."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start:start + batch_size]]
        width = max(len(e) for e in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)
        for row, example in enumerate(batch):
            ids[row, :len(example)] = torch.tensor(example)
            mask[row, :len(example)] = True
        ids, mask = ids.to(device), mask.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits
        nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        total += float(nll[mask[:, 1:]].sum())
        count += int(mask[:, 1:].sum())
    model.train()
    return total, count


def mean_nll(model, examples, device, batch_size) -> float:
    total, count = example_nll(model, examples, device, batch_size, bf16=device == "cuda")
    return total / count


def greedy_samples(model, tokenizer: Tokenizer, prompts: list[str], device: str, eos_id: int) -> list[str]:
    model.eval()
    samples = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt).ids], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=96, do_sample=False, eos_token_id=eos_id,
                                 pad_token_id=eos_id)
        samples.append(prompt + tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=False))
    model.train()
    return samples


def train(args, log: Log, model, train_examples, valid_examples, test_examples, device) -> dict:
    tokens_per_epoch = sum(len(e) for e in train_examples)
    max_steps = max(1, int(args.max_epochs * tokens_per_epoch / (args.batch_size * args.seq_len)))
    budget_s = args.minutes * 60.0
    log(f"train: {tokens_per_epoch} tokens per epoch, {args.batch_size} x {args.seq_len} tokens per step, "
        f"stops at {args.minutes} min or {max_steps} steps ({args.max_epochs} epochs)")

    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim != 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda",
    )
    rng = random.Random(args.seed)
    batches: list[torch.Tensor] = []
    epoch, step, tokens_seen = 0, 0, 0
    best = {"valid_loss": float("inf"), "step": 0, "state": None}
    recent_losses: list[float] = []
    last_train_loss = float("nan")
    eval_seconds = 0.0
    start = time.monotonic()
    next_eval = 1  # evaluations at every 1/args.evals of progress

    def progress_now() -> float:
        # The schedule runs on whichever budget ends first: wall-clock time or the epoch cap.
        return max((time.monotonic() - start) / budget_s, step / max_steps)

    model.train()
    while True:
        progress = progress_now()
        if progress >= 1.0:
            break
        if not batches:
            order = list(range(len(train_examples)))
            rng.shuffle(order)
            packed = pack(train_examples, order, args.seq_len)
            packed = packed[torch.randperm(len(packed), generator=torch.Generator().manual_seed(args.seed + epoch))]
            batches = list(packed.split(args.batch_size))[::-1]
            epoch += 1
        batch = batches.pop().to(device, non_blocking=True)
        lr = cosine_lr(progress, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += batch[:, 1:].numel()
        recent_losses.append(loss.item())

        if progress_now() * args.evals >= next_eval:
            eval_start = time.monotonic()
            valid_loss = mean_nll(model, valid_examples, device, args.eval_batch_size)
            test_loss = mean_nll(model, test_examples, device, args.eval_batch_size)
            eval_seconds += time.monotonic() - eval_start
            next_eval = math.floor(progress_now() * args.evals) + 1
            elapsed = time.monotonic() - start
            train_loss = sum(recent_losses) / len(recent_losses)
            last_train_loss = train_loss
            recent_losses.clear()
            if valid_loss < best["valid_loss"]:
                best = {"valid_loss": valid_loss, "test_loss": test_loss, "step": step, "train_loss": train_loss,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            log(f"step {step:5d} epoch {epoch:3d} {elapsed:6.0f}s lr {lr:.2e} grad {float(grad_norm):.2f} "
                f"train {train_loss:.4f} valid {valid_loss:.4f} test {test_loss:.4f} "
                f"tokens {tokens_seen / 1e6:.2f}M, {tokens_seen / (elapsed - eval_seconds) / 1e3:.0f}k tok/s training")

    final_train_loss = sum(recent_losses) / len(recent_losses) if recent_losses else last_train_loss
    valid_loss = mean_nll(model, valid_examples, device, args.eval_batch_size)
    if valid_loss < best["valid_loss"]:
        best = {"valid_loss": valid_loss, "step": step, "state": None,
                "test_loss": mean_nll(model, test_examples, device, args.eval_batch_size)}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    log(f"train: {step} steps, {epoch} epochs, {tokens_seen} tokens, {time.monotonic() - start:.0f}s; "
        f"keeping step {best['step']} (valid {best['valid_loss']:.4f}, test {best['test_loss']:.4f})")
    return {"steps": step, "epochs_started": epoch, "tokens_seen": tokens_seen, "kept_step": best["step"],
            "final_train_loss": final_train_loss, "kept_valid_loss": best["valid_loss"],
            "kept_test_loss": best["test_loss"], "train_seconds": time.monotonic() - start}


def save_checkpoint(model, tokenizer: Tokenizer, out: pathlib.Path, eos_id: int) -> None:
    model.generation_config.bos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.generation_config.do_sample = False
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size=MAX_SHARD_BYTES)
    tokenizer.save(str(out / "tokenizer.json"))


def bundle_if_too_many_files(out: pathlib.Path) -> None:
    """Keeps OUT at MAX_OUTPUT_FILES files: the fewest text files, the run report first, go into one tar."""
    files = sorted(p for p in out.iterdir() if p.is_file())
    for path in files:
        if path.stat().st_size >= 15 * 1000 * 1000:
            raise RuntimeError(f"{path} is {path.stat().st_size} bytes, over the 15 MB limit per file")
    if len(files) <= MAX_OUTPUT_FILES:
        return
    candidates = ["train_log.txt", "metrics.json", "generation_config.json", "tokenizer.json", "config.json",
                  "model.safetensors.index.json"]
    bundled = candidates[: len(files) - MAX_OUTPUT_FILES + 1]
    if len(bundled) < len(files) - MAX_OUTPUT_FILES + 1:
        raise RuntimeError(f"{out} holds {len(files)} files; even one tar of the text files leaves too many")
    print(f"output: {len(files)} files > {MAX_OUTPUT_FILES}: {bundled} go into {REPORT_TAR}", flush=True)
    with tarfile.open(out / REPORT_TAR, "w") as tar:
        for name in bundled:
            tar.add(out / name, arcname=name)
    for name in bundled:
        (out / name).unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=pathlib.Path, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of the training loop")
    parser.add_argument("--max-epochs", type=float, default=8.0,
                        help="the schedule ends here if time allows more: more repeats of GSM8K only overfit")
    parser.add_argument("--tiny", action="store_true",
                        help="a small model, short sequences and a data subset: to test the script on a CPU")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per packed training sequence")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the schedule")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--evals", type=int, default=16, help="evaluations over the schedule")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    if args.tiny:
        args.batch_size, args.seq_len, args.eval_batch_size, args.evals = 4, 128, 16, 4

    wall_start = time.monotonic()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    log = Log(args.out / "train_log.txt")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none (cpu)"
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}, gpu {gpu}")

    train_rows = read_jsonl(args.data / "train.jsonl")
    test_rows = read_jsonl(args.data / "test.jsonl")
    random.Random(args.seed).shuffle(train_rows)
    if args.tiny:
        train_rows, test_rows = train_rows[:600], test_rows[:24]
    valid_count = min(VALIDATION_EXAMPLES, len(train_rows) // 25)
    valid_rows, train_rows = train_rows[:valid_count], train_rows[valid_count:]
    train_texts = [format_example(r) for r in train_rows]

    tokenizer = train_tokenizer(train_texts + [format_example(r) for r in valid_rows], args.vocab_size)
    eos_id = tokenizer.token_to_id(END_OF_TEXT)
    train_examples = encode_examples(tokenizer, train_texts, eos_id)
    valid_examples = encode_examples(tokenizer, [format_example(r) for r in valid_rows], eos_id)
    test_examples = encode_examples(tokenizer, [format_example(r) for r in test_rows], eos_id)
    chars = sum(len(t) for t in train_texts)
    train_tokens = sum(len(e) for e in train_examples)
    log(f"tokenizer: {tokenizer.get_vocab_size()} ids, {END_OF_TEXT} = {eos_id}; train {len(train_examples)} "
        f"examples {train_tokens} tokens ({chars / train_tokens:.2f} chars/token), valid {len(valid_examples)}, "
        f"test {len(test_examples)} examples {sum(len(e) for e in test_examples)} tokens")

    config = model_config(args.tiny, args.vocab_size, eos_id)
    model = Qwen3_5ForCausalLM._from_config(config, attn_implementation="sdpa").to(device)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f}M parameters, layers {config.layer_types}, hidden {config.hidden_size}")

    result = train(args, log, model, train_examples, valid_examples, test_examples, device)
    save_checkpoint(model, tokenizer, args.out, eos_id)

    # Every reported number and sample comes from the saved bf16 checkpoint, reloaded and run in fp32:
    # the same weights and math the engine's perplexity is compared against.
    del model
    reloaded = Qwen3_5ForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="sdpa")
    reloaded = reloaded.to(device).eval()
    nll_sum, nll_count = example_nll(reloaded, test_examples, device, args.eval_batch_size, bf16=False)
    test_ppl = math.exp(nll_sum / nll_count)
    test_question = test_rows[0]["question"]
    prompts = SAMPLE_PROMPTS + [f"Q: {test_question}\n{ANSWER_LEAD}"]
    for sample in greedy_samples(reloaded, tokenizer, prompts, device, eos_id):
        log("sample: " + json.dumps(sample))

    metrics = {
        "parameters": params,
        "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                   "vocab_size", "num_attention_heads", "num_key_value_heads")},
        **result,
        "gsm8k_test_loss_saved_bf16": nll_sum / nll_count,
        "gsm8k_test_ppl_saved_bf16": test_ppl,
        "gsm8k_test_tokens_scored": nll_count,
        "ppl_definition": "each GSM8K test example alone, formatted 'Q: {question}\\nA: Let me solve this step by "
                          "step.\\n{answer}<|endoftext|>', no BOS; exp(sum of -log p over every token after the "
                          "first / their count); saved bf16 weights computed in fp32",
        "wall_seconds": time.monotonic() - wall_start,
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    log(f"gsm8k test ppl (saved bf16 weights, fp32 math) {test_ppl:.4f} over {nll_count} tokens; "
        f"wall {metrics['wall_seconds']:.0f}s")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("metrics.json: " + json.dumps(metrics, indent=2), flush=True)
    bundle_if_too_many_files(args.out)
    print("output: " + ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in sorted(args.out.iterdir())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
