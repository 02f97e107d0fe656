#!/usr/bin/env bash
# The serving measurements on one GPU, as run for bench/results/serve-*.json:
#   1. `uberlm serve --shape qwen3.5-27b --weights nvfp4` (random weights, the default model's tokenizer),
#      bench/serve_load.py at 1/8/32/64 streams, then `uberlm eval gsm8k` against it;
#   2. `uberlm serve --model models/default --device cuda`, `uberlm eval gsm8k` and the load benchmark.
# Usage: bench/serve-gpu.sh BIN_DIR GSM8K_TEST_JSONL OUT_DIR   (BIN_DIR holds uberlm; run from the repo root)
set -euo pipefail
bin=$1 data=$2 out=$3
mkdir -p "$out"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
commit=${UBERLM_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
script_dir=$(dirname "$0")

wait_healthy() {  # port, server pid
  for _ in $(seq 1 600); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || { echo "server exited"; return 1; }
    sleep 0.5
  done
  echo "server not healthy in 300 s"; return 1
}

# Runs one serve configuration: name, port, serve arguments...; then the load benchmark and eval gsm8k.
measure() {
  local name=$1 port=$2; shift 2
  local serve_cmd=("$bin/uberlm" serve --port "$port" "$@")
  echo "== $name: ${serve_cmd[*]}"
  "${serve_cmd[@]}" > "$out/$name-server.log" 2>&1 &
  local pid=$!
  local start=$(date +%s.%N)
  wait_healthy "$port" "$pid"
  local ready=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  local load_cmd=(python3 "$script_dir/serve_load.py" --url "http://127.0.0.1:$port" --streams 1,8,32,64
                  --requests-per-stream "${REQUESTS_PER_STREAM:-3}" --max-tokens 128 --data "$data" --json "$out/$name-load.json")
  echo "${load_cmd[*]}"
  "${load_cmd[@]}" || echo "load benchmark had errors"
  local eval_cmd=("$bin/uberlm" eval gsm8k --url "http://127.0.0.1:$port" --n "$EVAL_N" --concurrency 64 --data "$data"
                  --json "$out/$name-gsm8k.json")
  echo "${eval_cmd[*]}"
  "${eval_cmd[@]}" 2>&1 | tail -5
  curl -s "http://127.0.0.1:$port/metrics" > "$out/$name-metrics.txt" 2>/dev/null ||
    python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" > "$out/$name-metrics.txt"
  kill -INT "$pid"; wait "$pid" || true
  python3 - "$out" "$name" "$gpu" "$commit" "$ready" "${serve_cmd[*]}" "${load_cmd[*]}" "${eval_cmd[*]}" <<'EOF'
import datetime, json, sys
out, name, gpu, commit, ready, serve, load, evaluation = sys.argv[1:]
report = {"gpu": gpu, "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "server_ready_s": float(ready),
          "commands": {"serve": serve, "load": load, "eval_gsm8k": evaluation},
          "server_log": [l for l in open(f"{out}/{name}-server.log").read().splitlines() if "cuda backend" in l or "serving" in l],
          "load": json.load(open(f"{out}/{name}-load.json"))}
evaluation = json.load(open(f"{out}/{name}-gsm8k.json"))
evaluation["questions"] = evaluation["questions"][:3]  # samples; {name}-gsm8k.json has every question
report["eval_gsm8k"] = evaluation
json.dump(report, open(f"{out}/{name}.json", "w"), indent=2)
EOF
}

EVAL_N=${EVAL_N_27B:-64} measure serve-27b-h100 8123 --shape qwen3.5-27b --weights nvfp4 --tokenizer models/default \
  --device cuda --max-num-seqs 64 --max-model-len 4096 --gpu-memory-utilization 0.9
EVAL_N=${EVAL_N_DEFAULT:-1319} measure serve-default-cuda-h100 8124 --model models/default --device cuda --max-num-seqs 64 \
  --gpu-memory-utilization 0.5
echo "== done"
