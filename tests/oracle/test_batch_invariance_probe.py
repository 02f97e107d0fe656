"""bench/batch_invariance_probe.py against `uberlm serve` on the CPU backend with the default model: greedy
outputs alone, all at once and shuffled are identical, with long prompts prefilled in 64-token chunks
while the others decode. Run by CTest: UBERLM_BINARY and UBERLM_DEFAULT_MODEL name the binary and model."""
import os
import pathlib
import subprocess
import sys

import pytest
from uberlm_serve import start_serve, stop_serve

PROBE = pathlib.Path(__file__).resolve().parents[2] / "bench" / "batch_invariance_probe.py"


@pytest.fixture(scope="module")
def server_url():
    process, url = start_serve("--model", os.environ["UBERLM_DEFAULT_MODEL"], "--device", "cpu", "--max-num-seqs", "8",
                               "--max-num-batched-tokens", "64")
    yield url
    stop_serve(process)


def test_outputs_do_not_depend_on_the_batch(server_url, tmp_path):
    report = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, str(PROBE), "--url", server_url, "--n", "12", "--long-prompts", "3",
                             "--max-tokens", "24", "--json", str(report), "--expect-identical"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all_at_once vs alone: 0 of 12 outputs differ" in result.stdout
    assert "shuffled vs alone: 0 of 12 outputs differ" in result.stdout
