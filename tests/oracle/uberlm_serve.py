"""`uberlm serve` as a subprocess for the Python tests: started on a free port, its base URL read from what
it logs, stopped when the test module is done. UBERLM_BINARY names the binary."""
import os
import re
import subprocess
import time

import pytest


def start_serve(*arguments):
    """Starts `uberlm serve --port 0 ARGUMENTS...`; returns (process, "http://127.0.0.1:PORT")."""
    process = subprocess.Popen([os.environ["UBERLM_BINARY"], "serve", "--port", "0", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match.group(1))
    if port is None:
        process.kill()
        pytest.fail("uberlm serve did not report its port within 30 s")
    return process, f"http://127.0.0.1:{port}"


def stop_serve(process):
    process.terminate()
    process.wait(timeout=10)
