#!/usr/bin/env bash
# Speed of two builds in one device call (old and new binaries side by side, as bench/notes and the issues
# ask): `uberlm bench` of each, alternating ROUNDS times, then one JSON with every run and the ratios of the
# medians. Runs on the GPU machine from the repository root.
# Usage: bench/compare-binaries.sh OLD_UBERLM NEW_UBERLM OUT_JSON ROUNDS [uberlm bench arguments...]
set -euo pipefail
old=$1 new=$2 out=$3 rounds=$4
shift 4
work=$(mktemp -d)
for round in $(seq 1 "$rounds"); do
  for which in old new; do
    binary=$old; [ "$which" = new ] && binary=$new
    "$binary" bench "$@" --json "$work/$which-$round.json" > "$work/$which-$round.log" 2>&1 ||
      { echo "compare-binaries: $which round $round failed"; tail -20 "$work/$which-$round.log"; exit 1; }
    echo "compare-binaries: $which round $round:"
    grep -A12 "ms/step" "$work/$which-$round.log" | grep -E "^ +[0-9]+ " || true
  done
done
python3 - "$work" "$out" "$rounds" "$old" "$new" "$*" <<'PY'
import datetime, json, pathlib, statistics, sys
work, out, rounds, old, new, args = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
runs = {w: [json.loads((work / f"{w}-{r}.json").read_text()) for r in range(1, rounds + 1)] for w in ("old", "new")}
def medians(which, key, field, by):
    table = {}
    for run in runs[which]:
        for row in run.get(key, []):
            table.setdefault(row[by], []).append(row[field])
    return {k: statistics.median(v) for k, v in table.items()}
report = {"gpu": runs["new"][0]["gpu"], "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "old_binary": old, "new_binary": new, "bench_arguments": args, "rounds": rounds,
          "order": "old then new, alternating each round", "runs": runs, "comparison": {}}
for key, field, by in (("decode", "ms_per_step", "batch"), ("prefill", "ms", "tokens")):
    a, b = medians("old", key, field, by), medians("new", key, field, by)
    report["comparison"][key] = [{by: k, f"old_{field}": a[k], f"new_{field}": b[k], "new_over_old": b[k] / a[k]}
                                 for k in sorted(a) if k in b]
    for row in report["comparison"][key]:
        print(f"{key} {by} {row[by]}: old {row[f'old_{field}']:.3f} new {row[f'new_{field}']:.3f} new/old {row['new_over_old']:.4f}")
pathlib.Path(out).write_text(json.dumps(report, indent=2) + "\n")
PY
