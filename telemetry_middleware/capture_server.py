"""A local PostHog-compatible capture endpoint that shows exactly what leaves the machine.

Point `<APP>_POSTHOG_HOST` at it. It accepts what the posthog SDKs send
(`/batch/`, `/capture/`, `/e/`, `/i/v0/e/`, gzip or not), answers as PostHog
does, prints one readable line per event and appends the raw events to a JSONL
file. Fault modes let tests play a broken host. Standard library only.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

CAPTURE_PATHS = frozenset(
    {"/batch", "/capture", "/e", "/i/v0/e", "/track", "/engage", "/s", "/i/v0/ai/batch"}
)
MAX_BODY = 20 * 1024 * 1024

# How the server answers, to rehearse a broken PostHog host in tests.
MODES = ("ok", "error500", "ratelimit", "garbage", "hang", "slow", "close")


def decode_body(raw: bytes, content_encoding: str, query: str, content_type: str) -> Any:
    """The JSON payload, whatever wrapping the SDK used; raises ValueError if none fits."""
    data = raw
    compression = parse_qs(query).get("compression", [""])[0]
    if "gzip" in content_encoding.lower() or compression == "gzip-js" or raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"bad gzip body: {exc}") from None
    if "form-urlencoded" in content_type:
        fields = parse_qs(data.decode("utf-8", "replace"))
        data = base64.b64decode(fields.get("data", [""])[0] + "==")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"bad JSON body: {exc.__class__.__name__}") from None


def events_of(payload: Any) -> list[dict[str, Any]]:
    """The events inside a batch or single-event payload."""
    if isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        items = payload["batch"]
    elif isinstance(payload, list):
        items = payload
    elif isinstance(payload, dict) and "event" in payload:
        items = [payload]
    else:
        raise ValueError("no events in body")
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("an event is not an object")
    return list(items)


def describe(event: dict[str, Any]) -> str:
    """One readable line per event, for a person watching the terminal."""
    props = event.get("properties") or {}
    name = str(event.get("event"))
    if name == "api_request":
        detail = (
            f"{props.get('method')} {props.get('endpoint')} -> {props.get('status_code')} "
            f"in {props.get('duration_ms')} ms"
        )
    elif name == "cli_command":
        args = " ".join(str(a) for a in props.get("command_args") or [])
        ok = "ok" if props.get("success") else f"failed ({props.get('error_type')})"
        detail = f"{props.get('command')} {args} -> {ok} in {props.get('duration_ms')} ms"
    else:
        detail = ", ".join(f"{k}={v}" for k, v in props.items() if not str(k).startswith("$"))
    return f"[capture] {name:<16} {detail}"


class CaptureServer:
    """The endpoint, runnable in a thread (tests, demo) or in the foreground (CLI)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out: str | Path | None = None,
        echo: TextIO | None = None,
        mode: str = "ok",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        self.events: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []  # every raw body received, for leak checks
        self.requests = 0
        self._out = Path(out) if out else None
        self._echo = echo
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends "hang" mode on stop
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def start(self) -> CaptureServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop a server started with `start()`."""
        self._release.set()
        self._httpd.shutdown()
        self.close()

    def close(self) -> None:
        self._release.set()
        self._httpd.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least `count` events arrived (or the timeout); return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.events) >= count:
                    break
            time.sleep(0.01)
        with self._lock:
            return list(self.events)

    def _accept(self, raw: bytes, events: list[dict[str, Any]]) -> None:
        with self._lock:
            self.events.extend(events)
            if self._out is not None:
                with self._out.open("a", encoding="utf-8") as fh:
                    for event in events:
                        fh.write(json.dumps(event, sort_keys=True) + "\n")
            if self._echo is not None:
                for event in events:
                    self._echo.write(describe(event) + "\n")
                self._echo.flush()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "telemetry-capture"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's
                # algorithm meets the client's delayed ACK and each reply waits ~40 ms.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def handle(self) -> None:
                try:
                    super().handle()
                except ConnectionError:
                    pass  # the client gave up first (its timeout in mode "slow"): no traceback

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per event is printed instead

            def _reply(self, status: int, body: dict[str, Any] | bytes) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(200, {"status": "ok", "events": len(server.events)})

            def do_POST(self) -> None:
                with server._lock:
                    server.requests += 1
                if self._fault():
                    return
                parts = urlsplit(self.path)
                if parts.path.rstrip("/") not in CAPTURE_PATHS:
                    self._reply(404, {"type": "invalid_request", "detail": "unknown path"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    self._reply(400, {"type": "invalid_request", "detail": "bad length"})
                    self.close_connection = True
                    return
                raw = self.rfile.read(length)
                with server._lock:
                    server.bodies.append(raw)
                try:
                    payload = decode_body(
                        raw,
                        self.headers.get("Content-Encoding") or "",
                        parts.query,
                        self.headers.get("Content-Type") or "",
                    )
                    events = events_of(payload)
                except ValueError as exc:
                    self._reply(400, {"type": "validation_error", "detail": str(exc)})
                    return
                server._accept(raw, events)
                self._reply(200, {"status": 1})

            def _fault(self) -> bool:
                """Play a broken host; True when the request was handled that way."""
                mode = server.mode
                if mode == "ok":
                    return False
                if mode == "hang":
                    server._release.wait()
                    self.close_connection = True
                    return True
                if mode == "slow":
                    if server._release.wait(5.0):
                        self.close_connection = True
                        return True
                    return False
                if mode == "close":
                    self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"sta')
                    self.close_connection = True
                    return True
                if mode == "garbage":
                    self.wfile.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
                    self.close_connection = True
                    return True
                status = 500 if mode == "error500" else 429
                self.close_connection = True
                self._reply(status, {"type": "server_error", "detail": mode})
                return True

        return Handler


def run(
    host: str,
    port: int,
    out: str | None,
    mode: str = "ok",
    ready: Callable[[CaptureServer], None] | None = None,
) -> int:
    """The `capture-server` command: serve in the foreground until interrupted."""
    server = CaptureServer(host, port, out=out, echo=sys.stdout, mode=mode)
    print(
        f"[capture] listening on {server.url} (POST /batch/); events -> {out or 'memory'}",
        flush=True,
    )
    if ready is not None:
        ready(server)
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a plain `kill` stops it cleanly too
    signal.signal(signal.SIGINT, stop)  # even when started from a non-interactive shell
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
