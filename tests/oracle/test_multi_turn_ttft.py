"""bench/multi_turn_ttft.py against `uberlm serve --enable-prefix-caching` on the CPU backend with the
default model: each later turn's prompt starts from the cached prefix of the turn before, and the
server's /metrics counts the prompt tokens that skipped. Run by CTest: UBERLM_BINARY and
UBERLM_DEFAULT_MODEL name the binary and model."""
import json
import os
import pathlib
import subprocess
import sys

from uberlm_serve import start_serve, stop_serve

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "multi_turn_ttft.py"


def test_later_turns_hit_the_prefix_cache(tmp_path):
    process, url = start_serve("--model", os.environ["UBERLM_DEFAULT_MODEL"], "--device", "cpu",
                               "--enable-prefix-caching")
    try:
        report = tmp_path / "ttft.json"
        result = subprocess.run([sys.executable, str(BENCH), "--url", url, "--conversations", "1", "--turns", "3",
                                 "--context-questions", "4", "--max-tokens", "16", "--json", str(report)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        measured = json.loads(report.read_text())
        assert len(measured["median_ttft_ms_per_turn"]) == 3
        # Turns 2 and 3 each start after at least the system message and the first question.
        assert measured["prefix_cache_hit_tokens"] >= 2 * 64, measured
    finally:
        stop_serve(process)
