"""A broken PostHog host never shows: the process exits on time, prints nothing, logs nothing.

Each case runs a real subprocess that configures logging like a host app (root
logger at DEBUG with its own handler), sends events through the real SDK, and
exits; the broken host is the capture server in a fault mode, a closed port or
a name that does not resolve.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, subprocess_env

from telemetry_middleware.capture_server import CaptureServer

pytestmark = pytest.mark.slow

FAULTS = ["refused", "hang", "error500", "ratelimit", "garbage", "slow", "close", "dns"]


@pytest.fixture(params=FAULTS)
def broken_host(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = request.param
    if mode == "refused":
        yield "http://127.0.0.1:9"
    elif mode == "dns":
        yield "http://telemetry-host.invalid"
    else:
        server = CaptureServer(mode=mode).start()
        try:
            yield server.url
        finally:
            server.stop()


SCRIPT = """
import logging, sys
log_file = sys.argv[1]
logging.basicConfig(level=logging.DEBUG, filename=log_file, force=True)
from telemetry_middleware import Telemetry
t = Telemetry("visivo", "1.0", api_key="phc_k", host=sys.argv[2], flush_interval=0.05)
t.capture("warm_up")
t.flush({flush})
for i in range(200):
    t._record_request("GET", 200, 1.0, "/items/{{item_id}}")
    t.capture("custom", {{"i": i}})
"""


@pytest.mark.parametrize("flush", [0.0, 0.5], ids=["exit-at-once", "after-flush"])
def test_broken_host_is_invisible_and_exit_is_bounded(
    broken_host: str, flush: float, home: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "host.log"
    start = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(SCRIPT.format(flush=flush)), str(log_file), broken_host],
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == ""
    assert log_file.read_text() == ""
    # shutdown timeout 1 s (+ the flush, + interpreter start-up): generous for a shared machine
    assert elapsed < 3.0 + flush
