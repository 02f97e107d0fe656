#!/usr/bin/env python3
"""Does a greedy request's output depend on what the server batches it with?

Sends N prompts to a running OpenAI-compatible server (ours or any other) three ways: one at a time,
all at once, and all at once in a shuffled order; then reports, against the one-at-a-time run, how many
outputs differ in text and in the logprobs of their tokens (when the server returns them), and where
the first difference is. Prompts are GSM8K test questions in the layout the default model knows;
--long-prompts adds prompts of several questions each, long enough to be prefilled in chunks while
other requests decode. Standard library only.

  bench/batch_invariance_probe.py --url http://127.0.0.1:8000 [--n 64] [--max-tokens 96] [--json PATH]

Exit status 1 when any output differs and --expect-identical is given.
"""
import argparse
import concurrent.futures
import json
import pathlib
import random
import sys
import time
import urllib.error
import urllib.request

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "gsm8k" / "test.jsonl"


def prompts(n, long_prompts, seed):
    questions = [json.loads(line)["question"] for line in DATA.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    picked = rng.sample(questions, n)
    out = [f"Q: {q}\nA: Let me solve this step by step.\n" for q in picked[: n - long_prompts]]
    for i in range(long_prompts):
        context = "\n".join(f"Q: {q}" for q in rng.sample(questions, 12))
        out.append(f"{context}\nQ: {picked[n - long_prompts + i]}\nA: Let me solve this step by step.\n")
    return out


def complete(url, model, prompt, max_tokens, api_key, logprobs):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if logprobs:
        body["logprobs"] = 1
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=1800) as reply:
        choice = json.loads(reply.read())["choices"][0]
    token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
    return {"text": choice["text"], "logprobs": token_logprobs}


def served_model(url, api_key):
    request = urllib.request.Request(f"{url}/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())["data"][0]["id"]


def supports_logprobs(url, model, api_key):
    try:
        complete(url, model, "Q: 1 + 1?\nA:", 1, api_key, True)
        return True
    except urllib.error.HTTPError:
        return False


def run(url, model, texts, order, concurrency, max_tokens, api_key, logprobs):
    results = [None] * len(texts)
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(complete, url, model, texts[i], max_tokens, api_key, logprobs): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results


def compare(reference, other):
    differing, report = 0, []
    for i, (a, b) in enumerate(zip(reference, other)):
        text_differs = a["text"] != b["text"]
        logprob_delta = None
        if a["logprobs"] is not None and b["logprobs"] is not None:
            shared = min(len(a["logprobs"]), len(b["logprobs"]))
            deltas = [abs(x - y) for x, y in zip(a["logprobs"][:shared], b["logprobs"][:shared])]
            logprob_delta = max(deltas, default=0.0)
        if text_differs or (logprob_delta or 0.0) != 0.0:
            differing += 1
            first = next((k for k, (x, y) in enumerate(zip(a["text"], b["text"])) if x != y),
                         min(len(a["text"]), len(b["text"])))
            report.append({"prompt": i, "text_differs": text_differs, "first_difference_at": first if text_differs else None,
                           "max_logprob_difference": logprob_delta})
    return differing, report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", help="model id (default: the server's first)")
    parser.add_argument("--api-key")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--long-prompts", type=int, default=8, help="of the n prompts, how many are long")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--expect-identical", action="store_true")
    args = parser.parse_args()

    model = args.model or served_model(args.url, args.api_key)
    logprobs = supports_logprobs(args.url, model, args.api_key)
    texts = prompts(args.n, min(args.long_prompts, args.n), args.seed)
    order = list(range(args.n))
    shuffled = order[:]
    random.Random(args.seed + 1).shuffle(shuffled)
    runs = {}
    for name, run_order, concurrency in (("alone", order, 1), ("all_at_once", order, args.n),
                                         ("shuffled", shuffled, args.n)):
        start = time.time()
        runs[name] = run(args.url, model, texts, run_order, concurrency, args.max_tokens, args.api_key, logprobs)
        print(f"{name}: {len(texts)} requests in {time.time() - start:.1f} s", file=sys.stderr)
    summary = {"url": args.url, "model": model, "n": args.n, "long_prompts": args.long_prompts,
               "max_tokens": args.max_tokens, "seed": args.seed, "logprobs_compared": logprobs, "against_alone": {}}
    total = 0
    for name in ("all_at_once", "shuffled"):
        differing, details = compare(runs["alone"], runs[name])
        total += differing
        summary["against_alone"][name] = {"differing": differing, "details": details}
        print(f"{name} vs alone: {differing} of {args.n} outputs differ"
              f"{' (text or token logprobs)' if logprobs else ' (text)'}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.expect_identical and total else 0


if __name__ == "__main__":
    sys.exit(main())
