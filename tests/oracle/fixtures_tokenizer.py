"""Tokenizer oracle: byte-level BPE tokenizers trained with the `tokenizers` package on GSM8K train
text, and the ids / decoded text that package gives for every GSM8K test question plus tricky
strings. Writes, per tokenizer variant, <variant>/tokenizer.json and <variant>/cases.jsonl with one
{"text", "parse_special", "ids", "decoded"} object per line."""
import json
import pathlib

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import trainers

GSM8K = pathlib.Path(__file__).resolve().parent / "../../data/gsm8k"

# The Split pattern of Qwen3.5's tokenizer.json (spec/qwen3_5.md, "Tokenizer and chat").
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 4096

TRICKY = [
    "",
    " ",
    "\u00a0",
    "a\u00a0b",
    "\u0085x\u0085",
    "x\u2028y\u2029z\u3000w\u1680v\u202fu\u205ft\u2003s",
    "zero\u200bwidth\ufeffbom",
    "Hello, world!",
    "don't I'LL we'Ve you're she'd it's THEY'RE O'Neil",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣ rainbow 🏳️‍🌈",
    "😀😀😀😀😀😀😀😀",
    "中文分词测试：今天天气很好。日本語のテキストです。한국어 문장입니다.",
    "مرحبا بالعالم! هذا نص عربي. ١٢٣٤٥",
    "e\u0301 caf\u00e9 cafe\u0301 A\u030a \u212b n\u0303o\u0303 \u1e9b\u0323",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333",
    "line one\r\nline two\r\n\r\nline four\rcr only\n\n\nthree newlines",
    "\ttab\tseparated\t\tvalues\t",
    "trailing spaces   \n   leading spaces",
    "                                                                x",
    " " * 300,
    "\n" * 50,
    " \t \n \r\n \u00a0 \n",
    "1234567890" * 30,
    "3.14159 2,718 1e-10 0x1F 1/2 -42 +7 $1,234.56 50% 12:30",
    "x" * 3000,
    "supercalifragilisticexpialidocious" * 20,
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|><|endoftext|>",
    "<|im_start|><|im_end|><|im_start",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "almost special <|im_star|> and <|IM_START|> and <|endoftext",
    "<think>reasoning</think> answer <think>",
    "call <tool_call>{\"name\": \"f\"}</tool_call>",
    "code: def f(x):\n    return x ** 2  # square\n\n\tif x != 0: pass",
    "URL https://example.com/path?q=1&r=2#frag email a.b@c.de",
    "¡¿¶§©®™°±×÷µ½¼¾‰€£¥¢",
    "math ∀x∈ℝ: x²≥0, ∑ᵢ aᵢ ≠ ∫ f(x) dx",
    "Ελληνικά Русский текст עברית हिन्दी ไทย",
    "\x01\x02\x1f control \x7f",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
    "...!!!???---___***",
    "Janet\u2019s ducks lay 16 eggs",
]

SPECIAL_FREE = [
    "<|im_start|>user\nhi<|im_end|>",
    "text<|endoftext|>more",
    "<think>x</think>",
]


def gsm8k_rows(name: str):
    with open(GSM8K / name, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def train(pre_tokenizer, normalizer, path: pathlib.Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = (row["question"] + "\n" + row["answer"] for row in gsm8k_rows("train.jsonl"))
    tokenizer.train_from_iterator(text, trainer)
    # Non-special added tokens: one matched on the raw text (like Qwen's <think>), one on the
    # normalized text, to cover both passes of added-token matching.
    tokenizer.add_tokens([AddedToken("<think>", special=False, normalized=False),
                          AddedToken("</think>", special=False, normalized=False),
                          AddedToken("<tool_call>", special=False, normalized=True)])
    tokenizer.save(str(path))


def edit_json(source: pathlib.Path, target: pathlib.Path, edit) -> None:
    config = json.loads(source.read_text(encoding="utf-8"))
    edit(config)
    target.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")


def legacy_merges(config) -> None:
    config["model"]["merges"] = [" ".join(pair) for pair in config["model"]["merges"]]


def prefix_space_ignore_merges(config) -> None:
    legacy_merges(config)
    config["pre_tokenizer"]["add_prefix_space"] = True
    config["model"]["ignore_merges"] = True


def write_cases(tokenizer_json: pathlib.Path, out: pathlib.Path) -> None:
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    texts = [row["question"] for row in gsm8k_rows("test.jsonl")] + TRICKY
    with open(out, "w", encoding="utf-8") as f:
        for parse_special, batch in [(True, texts), (False, SPECIAL_FREE)]:
            tokenizer.encode_special_tokens = not parse_special
            for text in batch:
                ids = tokenizer.encode(text).ids
                decoded = tokenizer.decode(ids, skip_special_tokens=False)
                f.write(json.dumps({"text": text, "parse_special": parse_special, "ids": ids,
                                    "decoded": decoded}, ensure_ascii=False) + "\n")


def make(out: pathlib.Path) -> None:
    qwen = out / "qwen"
    qwen.mkdir(parents=True, exist_ok=True)
    train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]), normalizers.NFC(), qwen / "tokenizer.json")
    write_cases(qwen / "tokenizer.json", qwen / "cases.jsonl")

    gpt2 = out / "gpt2"
    gpt2.mkdir(parents=True, exist_ok=True)
    train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None,
          out / "gpt2_trained.json")
    edit_json(out / "gpt2_trained.json", gpt2 / "tokenizer.json", legacy_merges)
    write_cases(gpt2 / "tokenizer.json", gpt2 / "cases.jsonl")

    prefix = out / "gpt2_prefix_space"
    prefix.mkdir(parents=True, exist_ok=True)
    edit_json(out / "gpt2_trained.json", prefix / "tokenizer.json", prefix_space_ignore_merges)
    write_cases(prefix / "tokenizer.json", prefix / "cases.jsonl")
    (out / "gpt2_trained.json").unlink()
