"""Helpers shared by the benchmarks: a capture server in its own process, medians, the machine."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def capture_server_process(mode: str = "ok") -> Iterator[str]:
    """The capture endpoint in a separate process, so its CPU is not counted as ours."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry_middleware",
            "capture-server",
            "--port",
            str(port),
            "--mode",
            mode,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(5)


@contextmanager
def temp_home() -> Iterator[str]:
    """A throwaway HOME and CI=false, so benchmarks never touch the real home directory."""
    old = {k: os.environ.get(k) for k in ("HOME", "CI")}
    with tempfile.TemporaryDirectory() as home:
        os.environ["HOME"] = home
        os.environ["CI"] = "false"
        try:
            yield home
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def median_us(func: Callable[[], None], number: int, rounds: int = 7) -> float:
    """Median over `rounds` of the mean time per call, in microseconds."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            func()
        results.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(results)


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"{'measure':<{width}}  {'result':>14}  target / anchor")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")


def bench_telemetry(host: str) -> Any:
    """An enabled Telemetry whose worker sleeps while requests are timed.

    The flush interval is long and the queue large: benchmarks flush between rounds,
    so what is timed is the request path alone.
    """
    from telemetry_middleware import Telemetry

    return Telemetry(
        "visivo",
        "1.4.0",
        project_name="bench",
        api_key="phc_bench",
        host=host,
        flush_interval=3600.0,
        max_queue_size=1_000_000,
    )
