"""What `track_command` adds to a CLI process that exits right after the command.

    .venv/bin/python bench/bench_cli.py [--runs N] [--pause SECONDS]

Real subprocesses, timed from `subprocess.run` to exit with `time.perf_counter()`: the
wall-clock time a person waits for the prompt to come back. Every variant runs the same
script; only the mode argument differs:

* baseline: import `telemetry_middleware`, build an enabled `Telemetry`, exit (no event,
  so no worker thread);
* off: telemetry disabled by `VISIVO_TELEMETRY_DISABLED=1`, one `track_command` block;
* reachable: one `track_command` block, host = a capture endpoint on loopback that answers;
* hanging: the host accepts the connection and never answers (`CaptureServer(mode="hang")`);
* refusing: the host is a closed loopback port (connection refused);
* reachable/hanging, in-process: the same with `exit_handoff=False`, so the events are sent
  by this process's own worker at exit (importing the posthog SDK, about 0.1 s, then the HTTP
  call, bounded by the 1 s shutdown timeout) instead of being handed to a detached sender.

By default, events still queued at exit are handed to a detached sender process
(`telemetry_middleware.handoff`), so the reachable and hanging rows mostly measure that
hand-off (one process spawn); the in-process rows show what it saves.

Variants run interleaved, round by round, after one untimed warm-up run each (the first run
creates the machine id and sends `new_installation`). Between runs the bench pauses (0.5 s,
untimed) so that the detached sender of one run has finished before the next run starts: run
back to back (`--pause 0`) on a small machine, each run also pays for the previous run's
sender importing the SDK, which is CPU contention rather than the cost of one command.

Added ms = median(variant) - median(baseline); "added (min)" compares the fastest runs, which
is steadier on a busy machine. Targets: <= 50 ms when reachable, <= 1100 ms when hanging.
Subprocesses get HOME set to a temporary directory and CI=false, so the real home is never
touched.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUNS = 12
PAUSE_S = 0.5
TARGETS_MS = {
    "reachable": 50.0,
    "hanging": 1100.0,
    "reachable, in-process": 50.0,
    "hanging, in-process": 1100.0,
}

SCRIPT = """
import sys

from telemetry_middleware import Telemetry

mode, host, project = sys.argv[1:4]
telemetry = Telemetry(
    "visivo", "1.4.0", api_key="phc_bench", host=host, project_dir=project,
    exit_handoff=mode != "track-in-process",
)
if mode != "baseline":
    with telemetry.track_command(["visivo", "run", "--threads", "4"]) as command:
        command.job_count = 1
"""


def _closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _env(home: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VISIVO_") and k not in ("DO_NOT_TRACK", "PYTHONPATH")
    }
    env.update(HOME=home, CI="false", PYTHONPATH=str(ROOT), **extra)
    return env


def _time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    elapsed = (time.perf_counter() - start) * 1000.0
    if done.returncode != 0 or done.stdout or done.stderr:
        raise RuntimeError(f"bench script misbehaved: rc={done.returncode} {done.stderr[-500:]}")
    return elapsed


def run(runs: int = RUNS, pause: float = PAUSE_S) -> list[dict[str, Any]]:
    """One row per variant: median/min/max wall ms, added ms over baseline, target if any."""
    from telemetry_middleware.capture_server import CaptureServer

    workdir = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    home = workdir / "home"
    home.mkdir()
    project = workdir / "project"
    project.mkdir()
    script = workdir / "cli.py"
    script.write_text(SCRIPT)

    ok = CaptureServer().start()
    hang = CaptureServer(mode="hang").start()
    refused = f"http://127.0.0.1:{_closed_port()}"
    env = _env(str(home))
    variants: list[tuple[str, str, str, dict[str, str]]] = [
        ("baseline", "baseline", ok.url, env),
        ("off", "track", ok.url, _env(str(home), VISIVO_TELEMETRY_DISABLED="1")),
        ("reachable", "track", ok.url, env),
        ("hanging", "track", hang.url, env),
        ("refusing", "track", refused, env),
        ("reachable, in-process", "track-in-process", ok.url, env),
        ("hanging, in-process", "track-in-process", hang.url, env),
    ]
    samples: dict[str, list[float]] = {name: [] for name, *_ in variants}
    try:
        for _name, mode, host, variant_env in variants:  # warm-up, untimed
            _time_once([sys.executable, str(script), mode, host, str(project)], variant_env)
        received_before = sum(1 for e in ok.events if e["event"] == "cli_command")
        for index in range(runs):
            shift = index % len(variants)
            for name, mode, host, variant_env in variants[shift:] + variants[:shift]:
                argv = [sys.executable, str(script), mode, host, str(project)]
                samples[name].append(_time_once(argv, variant_env))
                time.sleep(pause)
        # Detached senders may still be on their way: give them a moment to arrive.
        expected = received_before + 2 * runs  # both reachable variants
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if sum(1 for e in ok.events if e["event"] == "cli_command") >= expected:
                break
            time.sleep(0.05)
        delivered = sum(1 for e in ok.events if e["event"] == "cli_command") - received_before
    finally:
        ok.stop()
        hang.stop()

    base = statistics.median(samples["baseline"])
    base_min = min(samples["baseline"])
    rows: list[dict[str, Any]] = []
    for name, *_ in variants:
        values = samples[name]
        median = statistics.median(values)
        target = TARGETS_MS.get(name)
        added = median - base
        rows.append(
            {
                "variant": name,
                "median_ms": round(median, 1),
                "min_ms": round(min(values), 1),
                "max_ms": round(max(values), 1),
                "added_ms": round(added, 1),
                "added_min_ms": round(min(values) - base_min, 1),
                "target_added_ms": target,
                "met": None if target is None else added <= target,
                "runs": runs,
                "pause_s": pause,
            }
        )
    rows[2]["delivered"] = f"{delivered}/{2 * runs}"
    return rows


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="timed runs per variant")
    parser.add_argument("--pause", type=float, default=PAUSE_S, help="seconds between runs")
    options = parser.parse_args()
    runs = max(3, options.runs)
    started = time.perf_counter()
    rows = run(runs, max(0.0, options.pause))
    elapsed = time.perf_counter() - started
    print("CLI process wall time with one track_command block, median of real subprocesses")
    print(
        f"{'variant':<22} {'median ms':>10} {'min':>8} {'max':>8} {'added ms':>9} "
        f"{'added (min)':>11} {'target':>8}  result"
    )
    for row in rows:
        target = "" if row["target_added_ms"] is None else f"<= {row['target_added_ms']:.0f}"
        result = "" if row["met"] is None else ("met" if row["met"] else "NOT met")
        print(
            f"{row['variant']:<22} {row['median_ms']:>10.1f} {row['min_ms']:>8.1f} "
            f"{row['max_ms']:>8.1f} {row['added_ms']:>+9.1f} {row['added_min_ms']:>+11.1f} "
            f"{target:>8}  {result}"
        )
    print(
        f"{runs} runs per variant, interleaved, {rows[0]['pause_s']:g} s apart; cli_command "
        f"events delivered by the two reachable variants: {rows[2]['delivered']}; {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
