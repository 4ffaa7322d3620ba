"""Load with a hanging PostHog host: 200 concurrent clients, the example apps with and without us.

    .venv/bin/python bench/bench_load.py [--seconds 12] [--slice 0.5] [--clients 200]

Each example app runs under its real server, as its users run it:

* FastAPI: `uvicorn examples.fastapi_app.app:app` (one process), `GET /api/v1/projects/{n}`;
* Flask: `gunicorn -w 2 --threads 50 examples.flask_app.app:app` (gthread workers),
  `GET /api/users/424242`.

"With" is the module's `app`: the telemetry middleware, telemetry enabled, its host pointed
at a capture endpoint in mode "hang" (it accepts connections and never answers), so the
telemetry worker of every server process is stuck on that host. "Without" is the same
example built by its own `create_app()` factory with no telemetry (`uvicorn --factory
...:create_app`, `gunicorn '...:create_app()'`): no middleware in the stack at all, not a
disabled pass-through.

Both servers of an app run side by side and take the load in turn, in slices of half a
second, A B B A A B B A ..., so that drift and the other work of a shared machine fall on
both alike. Before every slice the 200 client connections are opened; the clock starts when all
are open. Load generator: this process, 200 threads, one keep-alive `http.client`
connection each, requests back to back until the slice ends (and at most a bounded count);
latency runs from sending a request to its last body byte. (`httpx.AsyncClient` with 200
connections managed under 100 requests/s here, far below the servers: it would have
measured itself.) Each server is warmed up first under the same load (the telemetry worker
imports the SDK then), outside the timing.

Reported per variant: requests completed, failures (an error or an unexpected status: must
be 0), throughput, the medians over slices of p50 and p99 latency (and the p99 of all
requests pooled), server CPU per request (user + system of the server's processes during
its slices, connection set-up included) and p99(with) / p99(without): the ratio of the
medians (target: within 10%), and the median of the ratios of back-to-back slice pairs. The
telemetry worker keeps trying a hanging host for about 20 s (5 attempts of 3 s, with
backoff; "delivery attempts" below counts them) and then stops for the rest of the process;
the slices of one app span about 30 s, so about two thirds of the "with" slices run while
it is still trying, with its queue full (10,000 records) and later events dropped. All on
loopback; the client shares the machine's cores with the servers, equally
in both variants.
"""

from __future__ import annotations

import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE), str(HERE.parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import ROOT, free_port, machine  # noqa: E402

CLIENTS = 200
SECONDS = 12.0  # timed load per variant and app
SLICE_S = 0.5
WARM_UP_S = 2.0
MAX_REQUESTS_PER_SLICE = 200_000
REQUEST_TIMEOUT_S = 30.0
TARGET_P99_RATIO = 1.10
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = ("without", "with")


@dataclass(frozen=True)
class App:
    name: str
    with_cmd: Callable[[int], list[str]]
    without_cmd: Callable[[int], list[str]]
    path: Callable[[int], str]  # the path of the n-th request
    path_label: str
    expected_status: int = 200


def _uvicorn(target: str, *extra: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            *extra,
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]

    return command


def _gunicorn(target: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "--threads",
            "50",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            target,
        ]

    return command


APPS = [
    App(
        "FastAPI (uvicorn)",
        _uvicorn("examples.fastapi_app.app:app"),
        _uvicorn("examples.fastapi_app.app:create_app", "--factory"),
        lambda n: f"/api/v1/projects/{n % 1000}",
        "/api/v1/projects/{n}",
    ),
    App(
        "Flask (gunicorn -w 2 --threads 50)",
        _gunicorn("examples.flask_app.app:app"),
        _gunicorn("examples.flask_app.app:create_app()"),
        lambda n: "/api/users/424242",
        "/api/users/424242",
    ),
]


# -- the servers --


def _server_env(home: str, host: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VISIVO_") and k not in ("DO_NOT_TRACK", "PYTHONPATH")
    }
    env.update(HOME=home, CI="false", VISIVO_POSTHOG_HOST=host, PYTHONPATH=str(ROOT))
    return env


def _process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids += _process_tree(int(child))
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


class Server:
    """One example app under its server, in its own session and with its own HOME."""

    def __init__(self, command: Callable[[int], list[str]], host: str) -> None:
        self.port = free_port()
        self._home = tempfile.TemporaryDirectory(prefix="bench-load-home-")
        self.proc = subprocess.Popen(
            command(self.port),
            cwd=ROOT,
            env=_server_env(self._home.name, host),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pids: list[int] = []
        self.cpu = 0.0

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise RuntimeError("server not ready within 30 s")

    def stable(self) -> bool:
        """Still running, with the same processes (no worker died or was replaced)."""
        return self.proc.poll() is None and _process_tree(self.proc.pid) == self.pids

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the session started here
                    self.proc.wait()
        finally:
            self._home.cleanup()


# -- the load --


@dataclass
class Load:
    latencies: list[float]  # seconds, sorted
    failures: int
    elapsed: float

    @property
    def completed(self) -> int:
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile, in seconds."""
        if not self.latencies:
            return float("nan")
        rank = min(len(self.latencies) - 1, max(0, round(q / 100 * len(self.latencies)) - 1))
        return self.latencies[rank]


def generate_load(app: App, port: int, clients: int, duration: float, first: int = 0) -> Load:
    """`clients` keep-alive connections, requests back to back for `duration` s."""
    per_client = max(1, MAX_REQUESTS_PER_SLICE // clients)
    results: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    window: dict[str, float] = {}

    def open_window() -> None:  # run once, by the last thread to reach the start line
        window["began"] = time.perf_counter()
        window["deadline"] = window["began"] + duration

    start_line = threading.Barrier(clients + 1, action=open_window)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        mine = results[index]
        clock = time.perf_counter
        try:
            try:
                conn.connect()  # connections are open before the clock starts
            except OSError:
                pass  # the first request connects again, and counts a failure if it must
            start_line.wait()
            deadline = window["deadline"]
            n = first + index
            for _ in range(per_client):
                begin = clock()
                if begin >= deadline:
                    break
                try:
                    conn.request("GET", app.path(n))
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == app.expected_status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    ok = False
                if ok:
                    mine.append(clock() - begin)
                else:
                    failures[index] += 1
                n += clients
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait(timeout=60)  # every connection is open: the clock starts
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - window["began"]
    latencies = sorted(value for mine in results for value in mine)
    return Load(latencies, sum(failures), elapsed)


def measure_app(
    app: App, host: str, seconds: float, slice_s: float, clients: int
) -> dict[str, dict[str, Any]]:
    """Both variants of one app, side by side, in alternating slices; figures per variant."""
    slices = max(1, round(seconds / slice_s))
    servers: dict[str, Server] = {}
    samples: dict[str, list[Load]] = {variant: [] for variant in VARIANTS}
    failures = {variant: 0 for variant in VARIANTS}
    try:
        servers["with"] = Server(app.with_cmd, host)
        servers["without"] = Server(app.without_cmd, host)
        for server in servers.values():
            server.wait_ready(app.path(0))
        for variant, server in servers.items():
            failures[variant] += generate_load(app, server.port, clients, WARM_UP_S).failures
            server.pids = _process_tree(server.proc.pid)
        counter = 0
        for index in range(slices):
            # A B B A A B B A ...: each variant is as often first as second.
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                server = servers[variant]
                before = _cpu_seconds(server.pids)
                load = generate_load(app, server.port, clients, slice_s, counter)
                server.cpu += _cpu_seconds(server.pids) - before
                counter += load.completed + load.failures
                samples[variant].append(load)
                failures[variant] += load.failures
        for variant, server in servers.items():
            if not server.stable():
                failures[variant] += 1  # a server or worker died under load
    finally:
        for server in servers.values():
            server.stop()
    figures: dict[str, dict[str, Any]] = {}
    for variant, loads in samples.items():
        pooled = Load(sorted(v for load in loads for v in load.latencies), 0, 0.0)
        completed = sum(load.completed for load in loads)
        figures[variant] = {
            "completed": completed,
            "failures": failures[variant],
            "rps": completed / sum(load.elapsed for load in loads),
            "p50_ms": statistics.median(load.percentile(50) for load in loads) * 1e3,
            "p99_ms": statistics.median(load.percentile(99) for load in loads) * 1e3,
            "p99_pooled_ms": pooled.percentile(99) * 1e3,
            "p99_slices_ms": [load.percentile(99) * 1e3 for load in loads],
            "cpu_us_per_request": servers[variant].cpu / max(1, completed) * 1e6,
            "slices": len(loads),
        }
    return figures


def run(
    seconds: float = SECONDS, slice_s: float = SLICE_S, clients: int = CLIENTS
) -> list[dict[str, Any]]:
    """One row per app and variant, keyed like the other benchmarks' rows."""
    from telemetry_middleware.capture_server import CaptureServer

    hang = CaptureServer(mode="hang").start()
    rows: list[dict[str, Any]] = []
    try:
        for app in APPS:
            figures = measure_app(app, hang.url, seconds, slice_s, clients)
            base = figures["without"]
            # Slice i of "with" and slice i of "without" ran back to back: a paired ratio.
            paired = statistics.median(
                ours / theirs
                for ours, theirs in zip(
                    figures["with"]["p99_slices_ms"], base["p99_slices_ms"], strict=True
                )
            )
            for variant in VARIANTS:
                f = figures[variant]
                ratio = f["p99_ms"] / base["p99_ms"]
                ours = variant == "with"
                rows.append(
                    {
                        "variant": f"{app.name}, {variant} middleware, host hangs",
                        "path": app.path_label,
                        "median_us": round(f["p50_ms"] * 1e3, 1),
                        "overhead_us": round((f["p50_ms"] - base["p50_ms"]) * 1e3, 1),
                        "rounds": f["slices"],
                        "requests_per_round": round(f["completed"] / f["slices"]),
                        "requests": f["completed"],
                        "failures": f["failures"],
                        "rps": round(f["rps"]),
                        "p50_ms": round(f["p50_ms"], 2),
                        "p99_ms": round(f["p99_ms"], 2),
                        "p99_pooled_ms": round(f["p99_pooled_ms"], 2),
                        "p99_ratio": round(ratio, 3),
                        "p99_ratio_paired": round(paired if ours else 1.0, 3),
                        "cpu_us_per_request": round(f["cpu_us_per_request"], 1),
                        "clients": clients,
                        "seconds": seconds,
                        "result": (
                            f"p99 {f['p99_ms']:.1f} ms"
                            + (f" (x{ratio:.2f})" if ours else "")
                            + f", {f['completed']} requests, {f['failures']} failed"
                        ),
                        "target": (
                            f"p99 <= x{TARGET_P99_RATIO:.2f} of without, 0 failed"
                            if ours
                            else "baseline, 0 failed"
                        ),
                        "met": (ratio <= TARGET_P99_RATIO or not ours) and f["failures"] == 0,
                    }
                )
        rows[-1]["host_attempts"] = hang.requests  # POSTs that reached the hanging host
        return rows
    finally:
        hang.stop()


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help="load per variant")
    parser.add_argument("--slice", type=float, default=SLICE_S, help="seconds per slice")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent connections")
    options = parser.parse_args()
    started = time.perf_counter()
    rows = run(options.seconds, max(0.1, options.slice), max(1, options.clients))
    elapsed = time.perf_counter() - started
    print(
        f"Load with a hanging PostHog host: {options.clients} keep-alive clients, "
        f"{options.seconds:g} s per variant in alternating {options.slice:g} s slices"
    )
    print(
        f"{'app':<35} {'variant':<8} {'requests':>8} {'failed':>6} {'req/s':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'pooled':>7} {'ratio':>6} {'paired':>6} {'CPU µs/req':>10}"
    )
    for row in rows:
        app, variant = row["variant"].split(", ")[:2]
        print(
            f"{app:<35} {variant.split()[0]:<8} {row['requests']:>8} {row['failures']:>6} "
            f"{row['rps']:>6} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
            f"{row['p99_pooled_ms']:>7.2f} {row['p99_ratio']:>6.3f} "
            f"{row['p99_ratio_paired']:>6.3f} {row['cpu_us_per_request']:>10.1f}"
        )
    ours = [row for row in rows if "with middleware" in row["variant"]]
    worst = max(row["p99_ratio"] for row in ours)
    failed = sum(row["failures"] for row in rows)
    print(
        "p50/p99: medians over slices; pooled: p99 of all requests; ratio: p99 / p99 without; "
        "paired: median of the ratios of back-to-back slices"
    )
    print(
        f"target: p99 ratio <= "
        f"{TARGET_P99_RATIO:.2f} -> {'met' if worst <= TARGET_P99_RATIO else 'NOT met'} "
        f"(worst {worst:.3f}); failures {failed} -> {'met' if failed == 0 else 'NOT met'}"
    )
    print(
        f"delivery attempts that reached the hanging host: {rows[-1]['host_attempts']}; "
        f"{machine()}; {elapsed:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
