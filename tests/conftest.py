"""Shared fixtures: a real capture endpoint on loopback and an isolated environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from telemetry_middleware import Telemetry
from telemetry_middleware.capture_server import CaptureServer

ROOT = Path(__file__).resolve().parent.parent

# Variables that could leak the machine's own situation into a test.
_CLEARED_PREFIXES = ("VISIVO_", "DEMO_", "TESTAPP_")
_CLEARED = ("DO_NOT_TRACK",)


# The properties every event carries for app "visivo" (DESIGN.md, Events): the metadata,
# and what keeps PostHog from storing an address or a location.
METADATA_KEYS = frozenset(
    {
        "visivo_version",
        "python_version",
        "platform",
        "platform_version",
        "architecture",
        "session_id",
        "is_ci",
    }
)
PRIVACY_KEYS = frozenset({"$geoip_disable", "$ip"})
COMMON_KEYS = METADATA_KEYS | PRIVACY_KEYS

# The command line of the spec's sanitization example (spec/telemetry.md).
SPEC_ARGV = [
    "visivo",
    "run",
    "--dag-filter",
    "+my_chart+",
    "--threads",
    "4",
    "--output-dir",
    "/home/user/output",
]


def visivo_telemetry(project_dir: Path, host: str, **options: Any) -> Telemetry:
    """An enabled Telemetry for app `visivo` (project "my-project") sending to `host`."""
    return Telemetry(
        "visivo",
        "1.4.0",
        project_name="my-project",
        project_dir=project_dir,
        api_key="phc_test",
        host=host,
        flush_interval=0.05,
        **options,
    )


@contextmanager
def shared_telemetry(home: Path) -> Iterator[tuple[Telemetry, CaptureServer]]:
    """A capture endpoint and a Telemetry sending to it, for module-scoped fixtures.

    The environment is passed explicitly, so nothing has to patch `os.environ`.
    """
    capture = CaptureServer().start()
    telemetry = visivo_telemetry(home, capture.url, environ={"HOME": str(home), "CI": "false"})
    try:
        yield telemetry, capture
    finally:
        telemetry.shutdown(1.0)
        capture.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with no telemetry settings; CI=false because these machines run in Docker."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.setenv("CI", "false")
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES) or name in _CLEARED:
            monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    """A real PostHog-compatible endpoint in this process, on an ephemeral port."""
    server = CaptureServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def telemetry(home: Path, capture: CaptureServer, tmp_path: Path) -> Iterator[Telemetry]:
    """An enabled Telemetry for app `visivo` sending to the capture endpoint."""
    project = tmp_path / "project"
    project.mkdir()
    t = visivo_telemetry(project, capture.url)
    try:
        yield t
    finally:
        t.shutdown(1.0)


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process: this venv's Python, the test HOME, CI=false."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_CLEARED_PREFIXES) and k not in _CLEARED
    }
    env.update(HOME=str(home), CI="false", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


PYTHON = sys.executable
