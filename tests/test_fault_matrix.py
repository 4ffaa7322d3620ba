"""Fault matrix: the example apps under real servers and the example CLI, PostHog host broken.

Targets: the FastAPI example under uvicorn, the Flask example under gunicorn (2 sync
workers) and the example CLI as a subprocess. Modes: the capture endpoint refusing
connections (a bound port that does not listen), accepting and never answering (hang),
answering 500, answering 429 with Retry-After, answering garbage, answering after 5 s,
closing mid-response, and a host name that does not resolve; plus `ok`, a control that
proves telemetry really is on in these processes (events arrive), so that the fault
cells cannot pass because nothing was ever sent.

Each target runs as its users run it, except that a tiny host module first configures
logging as an application would (root logger at DEBUG with a file handler) and then
imports the example unchanged. For every cell, one server process is started and:

* every request of a fixed corpus gets its normal status and body, before and after a
  burst of 2,000 requests (matched routes and unmatched 404 paths) that all succeed;
* the server's RSS (each gunicorn worker's) grows by less than 30 MB over the burst; with
  the host hanging, a further 12,000 requests per worker go past the queue bound (10,000
  records, then events are dropped) and the growth stays under 30 MB too;
* after SIGTERM the process exits within the 1 s shutdown timeout plus a margin (uvicorn
  under 3 s, gunicorn under 5 s); with the host hanging or slow, SIGTERM is sent just
  after a delivery attempt began (while the workers still try), so that the telemetry
  worker is surely blocked on the network; the CLI's whole run takes less than 3 s;
* stdout and stderr stay empty (the servers run with their own logging turned down, so
  any line at all is reported, and one mentioning posthog, telemetry, urllib3, a
  traceback or a retry is named as such; the CLI prints exactly its own output), and the
  host's log file receives no record from the telemetry thread or from the HTTP stack;
* a capture server in a fault mode saw at least one delivery attempt (the fault was met).

The cells run a few at a time, each with its own HOME, capture endpoint and port; one
module fixture runs the cells that were selected and the tests read its results.
`python tests/test_fault_matrix.py` prints the matrix without pytest.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, ROOT, subprocess_env

from telemetry_middleware.capture_server import CaptureServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first test runs them all

MODES = ("ok", "refused", "hang", "error500", "ratelimit", "garbage", "slow", "close", "dns")
TARGETS = ("fastapi", "flask", "cli")
UNRESOLVABLE_HOST = "http://telemetry.invalid"

BURST = 2_000
BURST_THREADS = 4
WARM_UP = 200
# With the host hanging, every worker's queue fills: this many more requests per worker go
# past the queue bound (10,000 records), so events are dropped and RSS must level off.
SATURATION_PER_WORKER = 12_000
MAX_RSS_GROWTH_MB = 30.0
# SIGTERM to exit: the 1 s shutdown timeout, the server's own shutdown (uvicorn about 0.4 s,
# gunicorn up to 1 s) and a margin for a shared 2-core machine running other cells at once.
EXIT_LIMIT_S = {"fastapi": 3.0, "flask": 3.0}
CLI_RUN_LIMIT_S = 3.0
PARALLEL_CELLS = 3

# What must never show up in the app's output or in the host's log file.
FORBIDDEN = re.compile(r"posthog|telemetry|urllib3|traceback|retrying", re.IGNORECASE)
LOG_FORMAT = "%(threadName)s|%(name)s|%(levelname)s|%(message)s"
# Loggers whose records, whichever thread emitted them, would come from our delivery here
# (the example apps use none of these libraries themselves).
DELIVERY_LOGGERS = ("posthog", "urllib3", "requests", "charset_normalizer", "telemetry_middleware")

HOST_MODULE = """\
# A host application: it configures logging first, then imports the example unchanged.
import logging
import os

logging.basicConfig(
    level=logging.DEBUG, filename=os.environ["FAULT_HOST_LOG"], format={fmt!r}
)

from {module} import app  # noqa: E402,F401
"""

CLI_HOST = """\
# A host CLI: logging configured first, then the example run as `python -m` would.
import logging
import os
import runpy

logging.basicConfig(
    level=logging.DEBUG, filename=os.environ["FAULT_HOST_LOG"], format={fmt!r}
)
runpy.run_module("examples.cli_app.cli", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Expect:
    """One request of the corpus and its normal response."""

    method: str
    path: str
    status: int
    body: bytes | None = None  # exact bytes
    json: Any = None  # or equal JSON


def _fastapi_corpus() -> list[Expect]:
    static = (ROOT / "examples" / "fastapi_app" / "static" / "hello.txt").read_bytes()
    chart = "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"
    return [
        Expect("GET", "/", 200, json={"app": "visivo demo", "docs": "/docs"}),
        Expect("GET", "/health", 200, json={"status": "ok", "started": True}),
        Expect("GET", "/api/v1/projects/42", 200, json={"id": 42, "name": "project 42"}),
        Expect(
            "GET",
            f"/api/v1/projects/42/charts/{chart}",
            200,
            json={"project": 42, "chart": chart},
        ),
        Expect("GET", "/api/v1/users/jane?tab=1", 200, json={"username": "jane"}),
        Expect("GET", "/admin/jobs/7", 200, json={"job": 7}),
        Expect("GET", "/t/acme-corp/dashboard", 200, body=b"dashboard of acme-corp"),
        Expect("GET", "/static/hello.txt", 200, body=static),
        Expect("GET", "/stream", 200, body=b"".join(f"chunk {i}\n".encode() for i in range(5))),
        Expect("POST", "/api/v1/projects/42/runs", 202, json={"project": 42, "status": "queued"}),
        Expect("GET", "/users/jane.doe@example.com/profile", 404, json={"detail": "Not Found"}),
    ]


def _flask_corpus() -> list[Expect]:
    order = "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"
    user = {"id": 424242, "name": "Jane", "orders": [order]}
    return [
        Expect("GET", "/health", 200, json={"status": "ok"}),
        Expect("GET", "/api/users/424242", 200, json=user),
        Expect(
            "GET",
            f"/api/users/424242/orders/{order}",
            200,
            json={"user": 424242, "order": order, "status": "shipped"},
        ),
        Expect("GET", "/api/users/by-name/jane?x=1", 200, json={"matches": [user]}),
        Expect(
            "GET",
            f"/api/projects/{order}/files/a/b.txt",
            200,
            json={"project": order, "path": "a/b.txt"},
        ),
        Expect("GET", "/stream", 200, body=b"".join(f"chunk {i}\n".encode() for i in range(5))),
        Expect("GET", "/docs", 308),
        Expect("GET", "/api/users/7", 404),  # a matched rule that aborts
        Expect("GET", "/users/jane.doe@example.com/profile", 404),
        # send_file: gunicorn's zero-copy file wrapper
        Expect("GET", "/download", 200, body=(ROOT / "examples/flask_app/README.md").read_bytes()),
    ]


@dataclass(frozen=True)
class Target:
    name: str
    module: str  # the example's module, imported by the host module
    corpus: Callable[[], list[Expect]]
    burst_paths: Callable[[int], tuple[str, int]]  # request i of the burst: (path, status)
    ready_path: str


def _fastapi_burst(i: int) -> tuple[str, int]:
    if i % 2:
        return f"/api/v1/projects/{i}", 200
    return f"/api/v1/nothing/{i}/user{i}@example.com", 404  # unmatched: normalised on the worker


def _flask_burst(i: int) -> tuple[str, int]:
    if i % 2:
        return f"/api/projects/00000000-0000-4000-8000-{i:012d}/files/f{i}.csv", 200
    return f"/nothing/{i}/user{i}@example.com", 404


SERVER_TARGETS = {
    "fastapi": Target(
        "fastapi", "examples.fastapi_app.app", _fastapi_corpus, _fastapi_burst, "/health"
    ),
    "flask": Target("flask", "examples.flask_app.app", _flask_corpus, _flask_burst, "/health"),
}


@dataclass
class Cell:
    """What one (target, mode) run found."""

    target: str
    mode: str
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    rss_growth_mb: float | None = None
    rss_saturated_mb: float | None = None  # growth after going past the queue bound (hang)
    exit_s: float | None = None
    attempts: int | None = None  # POSTs that reached the capture endpoint
    events: int | None = None  # events it accepted (mode ok)
    mid_attempt: bool | None = None  # SIGTERM came as a delivery attempt had just begun

    def outcome(self) -> str:
        """The short form for the grid: verdict, exit (or run) time, RSS growth."""
        verdict = "FAIL" if self.problems else "pass"
        parts = [verdict]
        if self.exit_s is not None:
            parts.append(f"{'run' if self.target == 'cli' else 'exit'} {self.exit_s:.1f}s")
        if self.rss_growth_mb is not None:
            parts.append(f"{self.rss_growth_mb:+.1f}MB")
        return " ".join(parts)

    def details(self) -> str:
        if self.target == "cli":
            parts = [f"{self.requests} command with its normal output"]
        else:
            parts = [f"{self.requests} requests with their normal response"]
        if self.rss_growth_mb is not None:
            parts.append(f"RSS {self.rss_growth_mb:+.1f} MB over {BURST} requests")
        if self.rss_saturated_mb is not None:
            parts.append(f"{self.rss_saturated_mb:+.1f} MB once past the queue bound")
        if self.exit_s is not None:
            what = "whole run" if self.target == "cli" else "SIGTERM to exit"
            when = " (SIGTERM just after an attempt began)" if self.mid_attempt else ""
            parts.append(f"{what} {self.exit_s:.2f} s{when}")
        if self.events is not None:
            parts.append(f"{self.events} events delivered")
        elif self.attempts is not None:
            parts.append(f"{self.attempts} delivery attempts met the fault")
        return ", ".join(parts)


# -- the broken hosts --


@contextmanager
def telemetry_host(mode: str) -> Iterator[tuple[str, CaptureServer | None]]:
    """The URL the target sends to, and the capture server behind it (if any)."""
    if mode == "dns":
        yield UNRESOLVABLE_HOST, None
    elif mode == "refused":
        # Bound but not listening: connections are refused, and no one else can take the port.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", None
    else:
        server = CaptureServer(mode=mode).start()
        try:
            yield server.url, server
        finally:
            server.stop()


# -- helpers --


_PORTS_TAKEN: set[int] = set()
_PORTS_LOCK = threading.Lock()


def _server_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a server to bind.

    A port from binding port 0 comes from the ephemeral range, where the thousands of client
    connections that the other cells open meanwhile get their local ports: one of them could
    take it before the server binds it. Below that range no connection is given a port.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(max(10_000, low - 12_000), low))
    random.shuffle(candidates)
    with _PORTS_LOCK:
        for port in candidates:
            if port in _PORTS_TAKEN:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _PORTS_TAKEN.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return sorted(int(p) for p in path.read_text().split())
    except OSError:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
        return sorted(found)


def _request(conn: http.client.HTTPConnection, method: str, path: str) -> tuple[int, bytes]:
    conn.request(method, path)
    response = conn.getresponse()
    return response.status, response.read()


def _check(expect: Expect, status: int, body: bytes) -> str | None:
    """None when the response is the normal one, else what differs."""
    where = f"{expect.method} {expect.path}"
    if status != expect.status:
        return f"{where}: status {status}, expected {expect.status}"
    if expect.body is not None and body != expect.body:
        return f"{where}: body {body[:80]!r}, expected {expect.body[:80]!r}"
    if expect.json is not None:
        try:
            got = json.loads(body)
        except ValueError:
            return f"{where}: body is not JSON: {body[:80]!r}"
        if got != expect.json:
            return f"{where}: body {got!r}, expected {expect.json!r}"
    return None


def _run_corpus(port: int, corpus: list[Expect], cell: Cell) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for expect in corpus:
            try:
                status, body = _request(conn, expect.method, expect.path)
            except (OSError, http.client.HTTPException) as exc:
                cell.problems.append(f"{expect.method} {expect.path}: {exc!r}")
                conn.close()
                continue
            cell.requests += 1
            problem = _check(expect, status, body)
            if problem:
                cell.problems.append(problem)
    finally:
        conn.close()


def _burst(port: int, target: Target, count: int, offset: int = 0) -> tuple[int, list[str]]:
    """`count` requests over a few keep-alive connections; (completed, failures)."""
    failures: list[str] = []
    done = [0] * BURST_THREADS
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for i in range(offset + index, offset + count, BURST_THREADS):
                path, expected = target.burst_paths(i)
                try:
                    status, _ = _request(conn, "GET", path)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    with lock:
                        failures.append(f"GET {path}: {exc!r}")
                    continue
                if status != expected:
                    with lock:
                        failures.append(f"GET {path}: status {status}, expected {expected}")
                else:
                    done[index] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(BURST_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done), failures


def _wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                status, _ = _request(conn, "GET", path)
            finally:
                conn.close()
            if status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not ready within {timeout} s")


def _wait_workers(port: int, proc: subprocess.Popen[bytes], count: int) -> list[int]:
    """Gunicorn's worker pids, once each of them has booted and answered a request."""
    answered: set[int] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = _children(proc.pid)
        if len(workers) == count and answered >= set(workers):
            return workers
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            status, body = _request(conn, "GET", "/pid")
            if status == 200:
                answered.add(int(json.loads(body)["pid"]))
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            time.sleep(0.05)
        finally:
            conn.close()
    raise RuntimeError(f"{count} workers did not all answer within 20 s")


def _check_output(cell: Cell, name: str, text: str) -> None:
    """Any line is a problem: the servers' own logging is turned down to warnings."""
    for line in text.splitlines():
        if FORBIDDEN.search(line):
            cell.problems.append(f"{name} printed: {line[:160]}")
        elif line.strip():
            cell.problems.append(f"{name} printed an unexpected line: {line[:160]}")


def _check_log(cell: Cell, log_file: Path) -> None:
    for line in log_file.read_text(errors="replace").splitlines():
        thread, _, rest = line.partition("|")
        logger = rest.partition("|")[0]
        if (
            thread.startswith("telemetry")
            or logger.split(".")[0] in DELIVERY_LOGGERS
            or FORBIDDEN.search(line)
        ):
            cell.problems.append(f"host log received: {line[:160]}")


def _check_delivery(cell: Cell, capture: CaptureServer | None, expect_event: str) -> None:
    """The fault was really met: attempts reached the endpoint (events, in mode ok)."""
    if capture is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if capture.requests and (cell.mode != "ok" or capture.events):
            break
        time.sleep(0.05)
    cell.attempts = capture.requests
    if cell.mode == "ok":
        names = {event.get("event") for event in capture.events}
        cell.events = len(capture.events)
        if expect_event not in names:
            cell.problems.append(f"control: no {expect_event} event arrived ({sorted(names)})")
    elif not capture.requests:
        cell.problems.append("the capture endpoint never saw a delivery attempt")


def _await_attempt(capture: CaptureServer, timeout: float) -> bool:
    """Wait until a new delivery attempt reaches the endpoint; False if none came."""
    seen = capture.requests
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if capture.requests > seen:
            return True
        time.sleep(0.005)
    return False


def _server_command(target: str, port: int) -> list[str]:
    if target == "fastapi":
        return [
            PYTHON,
            "-m",
            "uvicorn",
            "fault_host_fastapi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [
        PYTHON,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "fault_host_flask:app",
    ]


def _write_hosts(directory: Path) -> None:
    for name, target in SERVER_TARGETS.items():
        (directory / f"fault_host_{name}.py").write_text(
            HOST_MODULE.format(fmt=LOG_FORMAT, module=target.module)
        )
    (directory / "fault_host_cli.py").write_text(CLI_HOST.format(fmt=LOG_FORMAT))


# -- the cells --


def run_server_cell(target_name: str, mode: str, workdir: Path) -> Cell:
    cell = Cell(target_name, mode)
    target = SERVER_TARGETS[target_name]
    home = workdir / "home"
    home.mkdir()
    log_file = workdir / "host.log"
    log_file.touch()
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with ExitStack() as stack:
        url, capture = stack.enter_context(telemetry_host(mode))
        env = subprocess_env(home, VISIVO_POSTHOG_HOST=url, FAULT_HOST_LOG=str(log_file))
        env["PYTHONPATH"] = os.pathsep.join([str(workdir.parent), str(ROOT)])
        out = stack.enter_context(out_path.open("wb"))
        err = stack.enter_context(err_path.open("wb"))
        port = _server_port()
        proc = subprocess.Popen(
            _server_command(target_name, port),
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            _wait_ready(port, target.ready_path, proc)
            workers = _wait_workers(port, proc, 2) if target_name == "flask" else [proc.pid]
            _run_corpus(port, target.corpus(), cell)
            done, failures = _burst(port, target, WARM_UP, offset=10 * BURST)
            cell.requests += done
            before = {pid: _rss_mb(pid) for pid in workers}
            done, more = _burst(port, target, BURST)
            failures += more
            cell.requests += done
            after = {pid: _rss_mb(pid) for pid in workers}
            cell.rss_growth_mb = max(after[pid] - before[pid] for pid in workers)
            if cell.rss_growth_mb >= MAX_RSS_GROWTH_MB:
                cell.problems.append(f"RSS grew by {cell.rss_growth_mb:.1f} MB over the burst")
            if mode == "hang":
                done, more = _burst(port, target, SATURATION_PER_WORKER * len(workers), BURST)
                failures += more
                cell.requests += done
                final = {pid: _rss_mb(pid) for pid in workers}
                cell.rss_saturated_mb = max(final[pid] - before[pid] for pid in workers)
                if cell.rss_saturated_mb >= MAX_RSS_GROWTH_MB:
                    cell.problems.append(
                        f"RSS grew by {cell.rss_saturated_mb:.1f} MB past the queue bound"
                    )
            cell.problems += failures[:5]
            if len(failures) > 5:
                cell.problems.append(f"... {len(failures)} failed burst requests in all")
            _run_corpus(port, target.corpus(), cell)  # still normal after the burst
            if target_name == "flask" and _children(proc.pid) != workers:
                cell.problems.append(
                    f"gunicorn workers changed: {workers} -> {_children(proc.pid)}"
                )
            _check_delivery(cell, capture, "api_request")
            if capture is not None and mode in ("hang", "slow"):
                # The worst moment: a delivery attempt has just begun and would block for
                # its whole 3 s timeout. (False if the workers have given up by now.)
                cell.mid_attempt = _await_attempt(capture, timeout=8.0)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                cell.problems.append("still running 20 s after SIGTERM")
            else:
                cell.exit_s = time.monotonic() - start
                if cell.exit_s >= EXIT_LIMIT_S[target_name]:
                    cell.problems.append(f"exit took {cell.exit_s:.2f} s after SIGTERM")
                if proc.returncode not in (0, -signal.SIGTERM):
                    cell.problems.append(f"exit status {proc.returncode}")
        except Exception as exc:
            cell.problems.append(f"harness: {exc!r}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the session this cell started
                proc.wait()
    _check_output(cell, "stdout", out_path.read_text(errors="replace"))
    _check_output(cell, "stderr", err_path.read_text(errors="replace"))
    _check_log(cell, log_file)
    return cell


def run_cli_cell(mode: str, workdir: Path) -> Cell:
    cell = Cell("cli", mode)
    home = workdir / "home"
    home.mkdir()
    log_file = workdir / "host.log"
    log_file.touch()
    with telemetry_host(mode) as (url, capture):
        env = subprocess_env(home, VISIVO_POSTHOG_HOST=url, FAULT_HOST_LOG=str(log_file))
        env["PYTHONPATH"] = os.pathsep.join([str(workdir.parent), str(ROOT)])
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [PYTHON, str(workdir.parent / "fault_host_cli.py"), "run", "--threads", "4"],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            cell.problems.append("the CLI ran for more than 30 s")
            return cell
        cell.exit_s = time.monotonic() - start
        if cell.exit_s >= CLI_RUN_LIMIT_S:
            cell.problems.append(f"the CLI took {cell.exit_s:.2f} s")
        if proc.returncode != 0:
            cell.problems.append(f"exit status {proc.returncode}")
        if proc.stdout == "ran 4 jobs\n":
            cell.requests = 1  # the command, with its normal output
        else:
            cell.problems.append(f"stdout {proc.stdout[:200]!r}, expected 'ran 4 jobs\\n'")
        _check_output(cell, "stderr", proc.stderr)
        _check_delivery(cell, capture, "cli_command")
    _check_log(cell, log_file)
    return cell


def run_matrix(cells: list[tuple[str, str]], base: Path) -> dict[tuple[str, str], Cell]:
    """Run the given (target, mode) cells a few at a time, the longest (servers, hang) first."""
    _write_hosts(base)
    results: dict[tuple[str, str], Cell] = {}
    order = sorted(cells, key=lambda c: (c[0] == "cli", c[1] != "hang", MODES.index(c[1]), c[0]))

    def one(target: str, mode: str) -> Cell:
        workdir = base / f"{target}-{mode}"
        workdir.mkdir()
        if target == "cli":
            return run_cli_cell(mode, workdir)
        return run_server_cell(target, mode, workdir)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL_CELLS) as pool:
        futures = {pool.submit(one, *cell): cell for cell in order}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results


def format_matrix(results: dict[tuple[str, str], Cell], details: bool = True) -> str:
    """The mode x target grid, then one line per cell (if `details`), then every problem."""
    targets = [t for t in TARGETS if any(key[0] == t for key in results)]
    modes = [m for m in MODES if any(key[1] == m for key in results)]
    heads = {"fastapi": "fastapi (uvicorn)", "flask": "flask (gunicorn -w 2)", "cli": "cli"}
    width = max([len(heads[t]) for t in targets] + [len(c.outcome()) for c in results.values()])
    lines = [f"{'mode':<10} " + " ".join(f"{heads[t]:<{width}}" for t in targets)]
    for mode in modes:
        row = [results[(t, mode)].outcome() if (t, mode) in results else "-" for t in targets]
        lines.append(f"{mode:<10} " + " ".join(f"{cell:<{width}}" for cell in row))
    for target in targets if details else ():
        for mode in modes:
            cell = results.get((target, mode))
            if cell is not None:
                lines.append(f"{target}/{mode}: {cell.details()}")
    for key in sorted(results):
        for problem in results[key].problems:
            lines.append(f"{key[0]}/{key[1]}: PROBLEM: {problem}")
    return "\n".join(lines)


# -- pytest --

ALL_CELLS = [(target, mode) for target in TARGETS for mode in MODES]


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], Cell]]:
    """Runs every selected cell once, concurrently, and prints the matrix at the end
    (with a line of figures per cell under `pytest -v`)."""
    selected = [
        (item.callspec.params["target"], item.callspec.params["mode"])
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    results = run_matrix(selected or ALL_CELLS, tmp_path_factory.mktemp("fault-matrix"))
    yield results
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown whatever the capture mode
            reporter.write_line("")
            reporter.write_sep("-", "fault matrix (mode x target)")
            reporter.write_line(format_matrix(results, request.config.get_verbosity() > 0))


@pytest.mark.parametrize(("target", "mode"), ALL_CELLS, ids=[f"{t}-{m}" for t, m in ALL_CELLS])
def test_fault_cell(matrix: dict[tuple[str, str], Cell], target: str, mode: str) -> None:
    cell = matrix[(target, mode)]
    assert not cell.problems, f"{target} with host mode {mode}:\n" + "\n".join(cell.problems)


if __name__ == "__main__":
    # python tests/test_fault_matrix.py [target or mode ...]: those rows or columns only
    wanted = set(sys.argv[1:])
    chosen = [c for c in ALL_CELLS if not wanted or wanted & set(c)]
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as tmp:
        began = time.monotonic()
        found = run_matrix(chosen, Path(tmp))
        print(format_matrix(found))
        print(f"{len(found)} cells in {time.monotonic() - began:.1f} s")
    sys.exit(1 if any(cell.problems for cell in found.values()) else 0)
