"""Deliver what is left at exit from a short-lived detached process.

A CLI command that ends before the worker has imported the SDK (about 0.1 s)
would otherwise hold the user's prompt for that long. Instead the finished
events go, through a pipe, to a new interpreter that sends them with the same
sender and exits on its own, bounded by an alarm. The parent pays for one
process spawn. Frozen executables and large payloads keep the in-process path.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

MAX_PAYLOAD = 60 * 1024  # below a pipe's buffer, so the parent never waits on the child
CHILD_DEADLINE = 15  # seconds the child may live, whatever the network does


def spawn(events: list[dict[str, Any]], api_key: str, host: str) -> bool:
    """Start the detached sender; False when this process should deliver itself."""
    if getattr(sys, "frozen", False) or not sys.executable or not events:
        return False
    payload = json.dumps({"api_key": api_key, "host": host, "events": events}).encode()
    if len(payload) > MAX_PAYLOAD:
        return False
    import subprocess

    package_parent = str(Path(__file__).resolve().parent.parent)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "telemetry_middleware.handoff"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=package_parent,  # the child imports this very copy of the package
            close_fds=True,
            start_new_session=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
    except Exception:
        return False
    return True


def main() -> None:
    """The child: read one payload from stdin, send it, exit quietly."""
    if hasattr(os, "setsid"):
        import signal

        signal.alarm(CHILD_DEADLINE)
    try:
        payload = json.loads(sys.stdin.buffer.read(MAX_PAYLOAD + 1))
        from .delivery import PostHogSink

        sink = PostHogSink(payload["api_key"], payload["host"])
        events = payload["events"]
        for start in range(0, len(events), 100):
            batch = events[start : start + 100]
            if not sink.send(batch) and not sink.dead:
                sink.send(batch)  # one retry; the deadline bounds it
    except BaseException:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
