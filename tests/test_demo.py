"""The README's first command cannot rot: run the demo's whole path as CI runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_leaks_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "LEAKED" not in out
    assert "18 events arrived (18 expected)." in out
    for expected in (
        "/api/v1/projects/{project_id}/charts/{chart_id}",
        "/t/{tenant}/dashboard",
        "/api/users/{user_id}/orders/{order_id}",
        "run --dag-filter <value> --threads <value> --output-dir <path>",
    ):
        assert expected in out
    for secret in ("424242", "jane.doe@example.com", "acme-corp", "utm_source"):
        assert secret not in out.split("event            endpoint")[1]
