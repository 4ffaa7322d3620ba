"""The demo: real apps under real servers send real events to a local capture endpoint.

`make demo` runs this. It starts the capture endpoint, the FastAPI example under
uvicorn and the Flask example under gunicorn (2 workers), sends a realistic mix
of requests, runs the example CLI, stops everything, and prints what arrived.
Nothing leaves this machine, and a throwaway HOME keeps your own home untouched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telemetry_middleware.capture_server import CaptureServer, decode_body  # noqa: E402

# Values that appear in the requests and the CLI call and must never be sent.
SECRETS = {
    "query strings": "utm_source=newsletter",
    "numeric ids": "424242",
    "uuids": "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c",
    "the email in a 404 path": "jane.doe@example.com",
    "the tenant name": "acme-corp",
    "CLI argument values": "+my_chart+",
    "CLI paths": "/home/user/output",
    "error messages": "secret-table-name",
    "the raw project name": "demo-project",
}

FASTAPI_REQUESTS = [
    ("GET", "/"),
    ("GET", "/api/v1/projects/424242?utm_source=newsletter"),
    ("GET", "/api/v1/projects/424242/charts/9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"),
    ("POST", "/api/v1/projects/424242/runs"),
    ("GET", "/t/acme-corp/dashboard"),
    ("GET", "/static/hello.txt"),
    ("GET", "/stream"),
    ("GET", "/users/jane.doe@example.com/profile"),
    ("GET", "/boom"),
]
FLASK_REQUESTS = [
    ("GET", "/"),
    ("GET", "/api/users/424242?utm_source=newsletter"),
    ("GET", "/api/users/424242/orders/9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"),
    ("GET", "/stream"),
    ("GET", "/nope/jane.doe@example.com"),
    ("GET", "/boom"),
]
CLI_CALLS = [
    ["run", "--dag-filter", "+my_chart+", "--threads", "4", "--output-dir", "/home/user/output"],
    ["compile", "--fail"],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


@contextmanager
def server(name: str, argv: list[str], port: int, env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_up(port, proc)
        print(f"  {name} is up on 127.0.0.1:{port}")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)  # a graceful stop: workers exit and flush
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def send(base: str, requests: list[tuple[str, str]]) -> None:
    for method, path in requests:
        req = urllib.request.Request(base + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        print(f"  {method:<5} {path:<70} -> {status}")


def table(events: list[dict[str, object]]) -> None:
    print(f"\n{'event':<17}{'endpoint or command':<68}{'method':<8}{'status':<8}{'ms':>9}")
    print("-" * 110)
    for event in events:
        props = event.get("properties")
        assert isinstance(props, dict)
        name = str(event.get("event"))
        if name == "api_request":
            what, method, status = props["endpoint"], props["method"], props["status_code"]
        elif name == "cli_command":
            args = " ".join(str(a) for a in props.get("command_args") or [])
            what, method = f"{props['command']} {args}", ""
            status = "ok" if props.get("success") else props.get("error_type")
        else:
            what, method, status = "(first run on this machine)", "", ""
        duration = props.get("duration_ms", "")
        ms = f"{duration:.1f}" if isinstance(duration, float) else str(duration)
        print(f"{name:<17}{str(what)[:67]:<68}{method!s:<8}{status!s:<8}{ms:>9}")


def main() -> int:
    capture = CaptureServer().start()
    home = tempfile.mkdtemp(prefix="telemetry-demo-home-")
    env = {
        **os.environ,
        "HOME": home,
        "CI": "false",
        "VISIVO_POSTHOG_HOST": capture.url,
        "PYTHONPATH": str(ROOT),
    }
    for name in ("VISIVO_TELEMETRY_DISABLED", "DO_NOT_TRACK", "VISIVO_TELEMETRY_DEBUG"):
        env.pop(name, None)
    bin_dir = Path(sys.executable).parent
    print(f"capture endpoint: {capture.url}  (VISIVO_POSTHOG_HOST points here)")
    print(f"throwaway HOME:   {home}\n")

    fastapi_port, flask_port = free_port(), free_port()
    uvicorn = [
        str(bin_dir / "uvicorn"),
        "examples.fastapi_app.app:app",
        "--port",
        str(fastapi_port),
        "--no-access-log",
    ]
    gunicorn = [
        str(bin_dir / "gunicorn"),
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{flask_port}",
        "examples.flask_app.app:app",
    ]
    print("FastAPI example under uvicorn:")
    with server("uvicorn", uvicorn, fastapi_port, env):
        send(f"http://127.0.0.1:{fastapi_port}", FASTAPI_REQUESTS)
    print("\nFlask example under gunicorn (2 workers):")
    with server("gunicorn", gunicorn, flask_port, env):
        send(f"http://127.0.0.1:{flask_port}", FLASK_REQUESTS)
    print("\nThe example CLI:")
    for call in CLI_CALLS:
        proc = subprocess.run(
            [sys.executable, "-m", "examples.cli_app.cli", *call],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        print(f"  visivo {' '.join(call):<66} -> exit {proc.returncode}")

    expected = len(FASTAPI_REQUESTS) + len(FLASK_REQUESTS) + len(CLI_CALLS) + 1
    events = capture.wait_for(expected, timeout=15)
    time.sleep(0.5)  # anything late
    events = list(capture.events)
    capture.stop()
    table(events)
    print(f"\n{len(events)} events arrived ({expected} expected).")

    raw = b"\n".join(
        repr(decode_body(body, "", "", "application/json")).encode() for body in capture.bodies
    )
    leaked = [what for what, value in SECRETS.items() if value.encode() in raw]
    sent_nothing = [what for what in SECRETS if what not in leaked]
    print("Not sent (checked in every byte that arrived): " + ", ".join(sent_nothing) + ".")
    if leaked:
        print("LEAKED: " + ", ".join(leaked))
        return 1
    return 0 if len(events) >= expected else 1


if __name__ == "__main__":
    sys.exit(main())
