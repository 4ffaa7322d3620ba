"""Emitter figures: caller-thread cost, CPU per delivered event, memory with the host down, exit.

Run: .venv/bin/python bench/bench_emitter.py
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from _common import ROOT, capture_server_process, median_us, print_table, temp_home

from telemetry_middleware import Telemetry

DELIVER_N = 20_000


def caller_cost() -> tuple[float, float]:
    """µs per `capture()` and per request record with the worker asleep.

    The queue is emptied between rounds, as the worker would: a queue left to grow
    to millions of records would time the garbage collector walking it instead.
    """
    t = Telemetry(
        "visivo",
        "1.0",
        api_key="k",
        host="http://127.0.0.1:9",
        max_queue_size=10_000_000,
        flush_interval=3600,
        exit_handoff=False,
    )
    t.capture("warm")
    assert t._emitter is not None
    queue = t._emitter._queue
    props = {"n": 1}
    record = t._record_request

    def rounds(call: Callable[[], None]) -> float:
        results = []
        for _ in range(15):
            queue.clear()
            results.append(median_us(call, 20_000, rounds=1))
        return statistics.median(results)

    capture_us = rounds(lambda: t.capture("bench", props))
    request_us = rounds(lambda: record("GET", 200, 1.25, "/items/{item_id}"))
    queue.clear()
    t.shutdown(0)
    return capture_us, request_us


DELIVERY_SCRIPT = """
import sys, time
kind, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "ours":
    from telemetry_middleware import Telemetry
    t = Telemetry("visivo", "1.0", api_key="k", host=url, max_queue_size=n + 10,
                  flush_interval=0.2)
    t.capture("warm"); t.flush(30)
    c0 = time.process_time()
    for i in range(n):
        t._record_request("GET", 200, 1.25, "/items/{item_id}")
    ok = t.flush(120)
    cpu = time.process_time() - c0
    sent = t._emitter.sent - 2
else:
    import posthog
    client = posthog.Posthog("k", host=url, max_queue_size=n + 10, flush_at=100,
                             disable_geoip=True)
    client.capture("warm", distinct_id="d"); client.flush()
    props = {"endpoint": "/items/{item_id}", "method": "GET", "status_code": 200,
             "duration_ms": 1.25, "visivo_version": "1.0", "python_version": "3",
             "platform": "linux", "platform_version": "6", "architecture": "x86_64",
             "session_id": "s", "is_ci": False}
    c0 = time.process_time()
    for i in range(n):
        client.capture("api_request", distinct_id="d", properties=props)
    client.flush()
    cpu = time.process_time() - c0
    sent = n
    client.shutdown()
print(cpu / sent * 1e6)
"""


def cpu_per_event(kind: str, url: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", DELIVERY_SCRIPT, kind, url, str(DELIVER_N)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


RSS_SCRIPT = """
import gc, resource, sys
from telemetry_middleware import Telemetry
def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
t = Telemetry("visivo", "1.0", api_key="k", host="http://127.0.0.1:9", exit_handoff=False)
t.capture("warm"); t.flush(1)
gc.collect(); before = rss_mb()
for i in range(1_000_000):
    t._record_request("GET", 200, 1.25, "/items/{item_id}")
gc.collect(); after = rss_mb()
print(after - before, t.dropped_events)
"""


def rss_growth() -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


EXIT_SCRIPT = """
import sys
from telemetry_middleware import Telemetry
t = Telemetry("visivo", "1.0", api_key="k", host=sys.argv[1], flush_interval=0.05)
if sys.argv[2] == "events":
    t.capture("warm"); t.flush(0.3)   # the sender is ready: exit waits on the worker
    for i in range(100):
        t.capture("pending")
"""


def exit_delay(url: str, runs: int = 5) -> float:
    def timed(arg: str) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", EXIT_SCRIPT, url, arg],
                cwd=ROOT,
                check=True,
                timeout=60,
                capture_output=True,
            )
            times.append(time.perf_counter() - start)
        times.sort()
        return times[len(times) // 2]

    # The warm-up flush (0.3 s against a hanging host) is not part of the exit delay.
    return timed("events") - timed("none") - 0.3


def run() -> list[tuple[str, str, str]]:
    rows = []
    with temp_home():
        capture_us, request_us = caller_cost()
        rows.append(("emitter: caller cost of capture()", f"{capture_us:.2f} µs", "≤ 2 µs"))
        rows.append(("emitter: caller cost of a request record", f"{request_us:.2f} µs", "≤ 2 µs"))
        gc.collect()
        with capture_server_process() as url:
            ours = cpu_per_event("ours", url)
            sdk = cpu_per_event("posthog", url)
        rows.append(("emitter: CPU per delivered event (ours)", f"{ours:.1f} µs", "≤ 25 µs"))
        rows.append(
            ("emitter: CPU per delivered event (posthog client)", f"{sdk:.1f} µs", "anchor ~109 µs")
        )
        growth, dropped = rss_growth()
        rows.append(
            (
                "emitter: RSS growth, 1M records, host down",
                f"{growth:.1f} MB",
                f"≤ 20 MB ({dropped} dropped)",
            )
        )
        with capture_server_process("hang") as url:
            delay = exit_delay(url)
        rows.append(("emitter: exit delay, hanging host", f"{delay:.2f} s", "≤ 1.1 s"))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print_table("Emitter", run())
