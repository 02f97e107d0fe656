#!/usr/bin/env python3
"""Serving load benchmark: aggregate generated tokens/s through a running `uberlm serve`.

At each concurrency level C, C client threads each send --requests-per-stream completions one after
another (non-streaming, so every generated token is counted from `usage`, also the ones a synthetic
model's tokenizer decodes to no text). Aggregate tokens/s = completion tokens of the level / wall time
from its first request to its last reply. The server's /metrics is read before and after each level
for its time-to-first-token and inter-token latency (means over the level) and preemptions.

Prompts are GSM8K test questions in the `eval gsm8k` layout, a different one per request; temperature 0.
Standard library only: runs on a bare GPU machine.

  bench/serve_load.py --url http://127.0.0.1:8000 --streams 1,8,32,64 --json out.json
"""
import argparse
import json
import pathlib
import re
import sys
import threading
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]


def post_json(url, body, timeout):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def metrics(url):
    """Sum of every sample of each metric name (labels summed over) from the Prometheus text."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if match and "_bucket" not in match.group(1):
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(3))
    return out


def mean_delta(before, after, name):
    count = after.get(name + "_count", 0) - before.get(name + "_count", 0)
    total = after.get(name + "_sum", 0) - before.get(name + "_sum", 0)
    return total / count if count > 0 else None


def load_prompts(path, count):
    prompts = []
    with open(path) as lines:
        for line in lines:
            if line.strip():
                prompts.append("Q: " + json.loads(line)["question"] + "\nA: Let me solve this step by step.\n")
            if len(prompts) == count:
                break
    if len(prompts) < count:
        sys.exit(f"serve_load: {path} has {len(prompts)} questions, {count} needed")
    return prompts


def run_level(args, model, streams, prompts):
    errors, results = [], []
    lock = threading.Lock()

    def client(index):
        for r in range(args.requests_per_stream):
            prompt = prompts[(index * args.requests_per_stream + r) % len(prompts)]
            body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}
            start = time.perf_counter()
            try:
                reply = post_json(args.url + "/v1/completions", body, args.timeout)
                usage = reply["usage"]
                with lock:
                    results.append((usage["prompt_tokens"], usage["completion_tokens"], time.perf_counter() - start))
            except Exception as error:  # counted and reported: a load test must not stop at one failure
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")

    before = metrics(args.url)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = metrics(args.url)
    generated = sum(r[1] for r in results)
    latencies = sorted(r[2] for r in results)
    level = {
        "streams": streams,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:3],
        "prompt_tokens": sum(r[0] for r in results),
        "completion_tokens": generated,
        "wall_s": round(wall, 3),
        "aggregate_tokens_per_s": round(generated / wall, 2) if wall > 0 else None,
        "per_stream_tokens_per_s": round(generated / wall / streams, 2) if wall > 0 else None,
        "request_latency_median_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "ttft_mean_s": mean_delta(before, after, "uberlm_time_to_first_token_seconds"),
        "inter_token_latency_mean_s": mean_delta(before, after, "uberlm_inter_token_latency_seconds"),
        "preemptions": after.get("uberlm_preemptions_total", 0) - before.get("uberlm_preemptions_total", 0),
    }
    return level


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--streams", default="1,8,32,64", help="comma-separated concurrency levels")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--data", default=str(REPO / "data" / "gsm8k" / "test.jsonl"), help="GSM8K JSONL for the prompts")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--warmup", type=int, default=1, help="requests sent alone before the levels")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    levels = [int(s) for s in args.streams.split(",")]

    with urllib.request.urlopen(args.url + "/v1/models", timeout=30) as reply:
        model = json.loads(reply.read())["data"][0]["id"]
    prompts = load_prompts(args.data, max(levels) * args.requests_per_stream)
    for i in range(args.warmup):  # first-use costs (CUDA graph capture of batch 1) stay out of the levels
        post_json(args.url + "/v1/completions",
                  {"model": model, "prompt": prompts[i], "max_tokens": 8, "temperature": 0}, args.timeout)

    report = {"url": args.url, "model": model, "max_tokens": args.max_tokens,
              "requests_per_stream": args.requests_per_stream, "levels": []}
    for streams in levels:
        level = run_level(args, model, streams, prompts)
        report["levels"].append(level)
        print(f"{streams:3d} streams: {level['completion_tokens']:6d} tokens in {level['wall_s']:7.2f} s = "
              f"{level['aggregate_tokens_per_s']:8.1f} tok/s aggregate, {level['per_stream_tokens_per_s']:6.1f} per stream, "
              f"errors {level['errors']}, preemptions {level['preemptions']:.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 1 if any(level["errors"] for level in report["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
