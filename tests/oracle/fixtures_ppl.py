"""Perplexity reference for `uberlm eval ppl`: transformers (in float64, common_float64.py) on the default model over the first
GSM8K test documents, each document alone, in the layout the eval command uses."""
import json
import math
import pathlib

import torch
from tokenizers import Tokenizer
from common_float64 import Float64Everywhere, in_float64
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "default"
GSM8K_TEST = ROOT / "data" / "gsm8k" / "test.jsonl"
DOCUMENTS = 24


def document_text(row: dict) -> str:
    return f"Q: {row['question']}\nA: Let me solve this step by step.\n{row['answer']}"


def make(out: pathlib.Path) -> None:
    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()[:DOCUMENTS]]
    total_nll, scored = 0.0, 0
    model = in_float64(model)
    with torch.no_grad(), Float64Everywhere():
        for row in rows:
            ids = tokenizer.encode(document_text(row), add_special_tokens=False).ids
            logits = model(torch.tensor([ids])).logits[0]
            nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum")
            total_nll += nll.item()
            scored += len(ids) - 1
    report = {"model": str(MODEL), "data": str(GSM8K_TEST), "documents": len(rows), "scored_tokens": scored,
              "mean_nll": total_nll / scored, "perplexity": math.exp(total_nll / scored)}
    (out / "reference.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"  transformers perplexity {report['perplexity']:.6f} over {scored} tokens of {len(rows)} documents")
