"""docs/events.md is checked against events built by the real code, so it cannot drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from telemetry_middleware import Telemetry
from telemetry_middleware.capture_server import CaptureServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def documented(section: str) -> set[str]:
    """Property names in the first column of the table under `## <section>`."""
    text = DOC.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else None]
    return set(re.findall(r"^\| `([^`]+)` \|", body, flags=re.M))


COMMON = documented("Common properties (every event)")


def test_doc_tables_are_found() -> None:
    assert "visivo_version" in COMMON and "$ip" in COMMON
    assert {"endpoint", "status_code"} <= documented("`api_request`")
    assert {"command_args", "error_type"} <= documented("`cli_command`")


def test_api_request_properties_match_the_doc(telemetry: Telemetry, capture: CaptureServer) -> None:
    telemetry._record_request("GET", 200, 1.0, "/projects/{project_id}")
    assert telemetry.flush(5)
    events = {e["event"]: e for e in capture.events}
    assert set(events["api_request"]["properties"]) == COMMON | documented("`api_request`")
    assert set(events["new_installation"]["properties"]) == COMMON


def test_cli_command_properties_match_the_doc(telemetry: Telemetry, capture: CaptureServer) -> None:
    with telemetry.track_command(["visivo", "run", "--threads", "4"]) as command:
        command.job_count = 4
        command.object_counts = {"charts": 2}
    with pytest.raises(ValueError), telemetry.track_command(["visivo", "compile"]):
        raise ValueError("boom")
    assert telemetry.flush(5)
    seen: set[str] = set()
    for event in capture.events:
        if event["event"] == "cli_command":
            keys = set(event["properties"])
            assert keys <= COMMON | documented("`cli_command`")
            seen |= keys
    assert seen == COMMON | documented("`cli_command`")


def test_example_payload_has_the_documented_shape() -> None:
    text = DOC.read_text()
    block = text[text.index("```json") + 7 : text.rindex("```")]
    payload = json.loads(block)
    assert set(payload) == {"distinct_id", "event", "properties", "timestamp", "uuid"}
    assert set(payload["properties"]) == COMMON | documented("`api_request`")
