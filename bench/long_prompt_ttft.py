#!/usr/bin/env python3
"""Time to first token of long prompts through a running `uberlm serve` (or any OpenAI-compatible server).

Each prompt is a list of random token ids (the completions API's token-id form), sent once to warm up at the
shortest length and then once per length with max_tokens 1; the time is from sending to the whole reply.
Usage: bench/long_prompt_ttft.py --url http://127.0.0.1:8000 --lengths 8192,32768 [--vocab 32000] [--json F]
"""
import argparse
import json
import random
import time
import urllib.request


def complete(url, model, prompt):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.load(response)
    return time.perf_counter() - start, reply


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--vocab", type=int, default=32000, help="token ids are drawn from 1 .. vocab - 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    rng = random.Random(args.seed)
    prompt = lambda n: [rng.randrange(1, args.vocab) for _ in range(n)]
    complete(args.url, args.model, prompt(min(lengths)))  # warm-up: graphs, allocator, first-use costs
    results = []
    for n in lengths:
        seconds, reply = complete(args.url, args.model, prompt(n))
        usage = reply.get("usage", {})
        row = {"prompt_tokens": n, "seconds": seconds, "tokens_per_s": n / seconds,
               "usage_prompt_tokens": usage.get("prompt_tokens")}
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"url": args.url, "lengths": lengths, "seed": args.seed, "results": results}, out, indent=1)


if __name__ == "__main__":
    main()
