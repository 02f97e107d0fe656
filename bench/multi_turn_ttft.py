#!/usr/bin/env python3
"""Time to first token of each turn of multi-turn chats, as a chat user feels it.

Runs C conversations of T turns against a running OpenAI-compatible server (ours or any other): a long
system message (GSM8K questions as context), then each turn a new user question, streamed, with the
assistant's reply appended to the history before the next turn, so every later prompt begins with the
one before. Reports the median time to the first streamed token per turn; with a server that exports
uberlm's prefix-cache counters on /metrics, also the prompt tokens a cached prefix skipped. Run it against
`uberlm serve` with and without --enable-prefix-caching to see what the cache saves. Standard library only.

  bench/multi_turn_ttft.py --url http://127.0.0.1:8000 [--conversations 4] [--turns 4] [--json PATH]
"""
import argparse
import json
import pathlib
import random
import re
import statistics
import sys
import time
import urllib.request

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "gsm8k" / "test.jsonl"


def post(url, path, body, api_key):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    return urllib.request.urlopen(request, timeout=1800)


def chat_turn(url, model, messages, max_tokens, api_key):
    """Streams one reply; returns (seconds to the first token, the reply's text)."""
    # logprobs makes the server send a chunk for every token, also one whose text is empty (a token the
    # tokenizer cannot spell, as random weights of a --shape server make), so the first token is timed
    # when it is made, not when the first printable one follows.
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "logprobs": True}
    start = time.perf_counter()
    first = None
    text = ""
    with post(url, "/v1/chat/completions", body, api_key) as reply:
        for raw in reply:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: "):]).get("choices") or [{}]
            delta = choices[0].get("delta", {})
            piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            token_logprobs = (choices[0].get("logprobs") or {}).get("content")
            if (piece or token_logprobs) and first is None:
                first = time.perf_counter() - start
            text += delta.get("content") or ""
    return (first if first is not None else time.perf_counter() - start), text


def metric(url, name, api_key):
    """A counter of the server's /metrics summed over its labels; None when the server has no such metric."""
    request = urllib.request.Request(f"{url}/metrics")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]
    return sum(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="default", help="model id sent in requests")
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--context-questions", type=int, default=12, help="GSM8K questions in the system message")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--label", default="", help="what this run is, e.g. 'prefix caching on', for the JSON")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()

    questions = [json.loads(line)["question"] for line in DATA.read_text().splitlines() if line.strip()]
    rng = random.Random(args.seed)
    hits_before = metric(args.url, "uberlm_prefix_cache_hit_tokens_total", args.api_key)
    ttft = [[] for _ in range(args.turns)]
    for c in range(args.conversations):
        context = "\n".join(f"Q: {q}" for q in rng.sample(questions, args.context_questions))
        messages = [{"role": "system", "content": f"Solved examples follow.\n{context}"}]
        for t in range(args.turns):
            messages.append({"role": "user", "content": rng.choice(questions)})
            seconds, reply = chat_turn(args.url, args.model, messages, args.max_tokens, args.api_key)
            messages.append({"role": "assistant", "content": reply})
            ttft[t].append(seconds)
            print(f"conversation {c} turn {t}: time to first token {1e3 * seconds:8.1f} ms", flush=True)
    hits_after = metric(args.url, "uberlm_prefix_cache_hit_tokens_total", args.api_key)

    report = {"url": args.url, "label": args.label, "conversations": args.conversations, "turns": args.turns,
              "context_questions": args.context_questions, "max_tokens": args.max_tokens, "seed": args.seed,
              "median_ttft_ms_per_turn": [1e3 * statistics.median(times) for times in ttft],
              "ttft_ms": [[1e3 * s for s in times] for times in ttft],
              "prefix_cache_hit_tokens": None if hits_after is None else hits_after - (hits_before or 0.0),
              "command": " ".join(sys.argv)}
    print("median time to first token per turn (ms): " +
          ", ".join(f"{ms:.1f}" for ms in report["median_ttft_ms_per_turn"]))
    if report["prefix_cache_hit_tokens"] is not None:
        print(f"prompt tokens skipped by cached prefixes: {report['prefix_cache_hit_tokens']:.0f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
