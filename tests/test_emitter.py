"""The event-emitter core: exact events, bounded queue, debug mode, flush and shutdown."""

from __future__ import annotations

import json
import logging
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import COMMON_KEYS, PYTHON, subprocess_env

from telemetry_middleware import Telemetry
from telemetry_middleware.capture_server import CaptureServer, decode_body
from telemetry_middleware.delivery import PostHogSink

COMMON = COMMON_KEYS


def _received(capture: CaptureServer, name: str) -> list[dict[str, object]]:
    return [e for e in capture.events if e["event"] == name]


def test_api_request_event_has_exactly_the_documented_properties(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    telemetry._record_request("GET", 200, 12.3456, "/projects/{project_id:int}")
    assert telemetry.flush(5)
    (event,) = _received(capture, "api_request")
    props = event["properties"]
    assert isinstance(props, dict)
    expected = COMMON | {"endpoint", "method", "status_code", "duration_ms", "project_hash"}
    assert set(props) == expected
    assert props["endpoint"] == "/projects/{project_id}"
    assert props["method"] == "GET"
    assert props["status_code"] == 200
    assert props["duration_ms"] == pytest.approx(12.346)
    assert props["project_hash"] == telemetry.project_hash
    assert props["$geoip_disable"] is True
    assert props["is_ci"] is False
    assert set(event) == {"event", "distinct_id", "properties", "timestamp", "uuid"}
    assert event["distinct_id"] == (Path.home() / ".visivo" / "machine_id").read_text().strip()


def test_each_event_gets_its_own_uuid_and_a_utc_timestamp(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    for i in range(50):
        telemetry.capture("custom_event", {"i": i})
    assert telemetry.flush(5)
    events = _received(capture, "custom_event")
    assert len(events) == 50
    assert len({e["uuid"] for e in events}) == 50
    for event in events:
        assert str(event["timestamp"]).endswith("Z")
        assert str(event["uuid"])[14] == "4"


def test_custom_properties_are_cleaned_and_cannot_override_ours(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    telemetry.capture(
        "custom_event",
        {
            "count": 3,
            "ratio": 0.5,
            "flag": True,
            "label": "ok",
            "$ip": "203.0.113.9",
            "is_ci": "spoofed",
            "obj": object(),
            "long": "x" * 5000,
            "nan": float("nan"),
            ("tuple", "key"): 1,
        },
    )
    assert telemetry.flush(5)
    (event,) = _received(capture, "custom_event")
    props = event["properties"]
    assert isinstance(props, dict)
    assert {k: props[k] for k in ("count", "ratio", "flag", "label")} == {
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "label": "ok",
    }
    assert props["$ip"] == "0.0.0.0"
    assert props["is_ci"] is False
    assert props["nan"] is None
    assert "obj" not in props and "long" not in props
    assert set(props) == COMMON | {"count", "ratio", "flag", "label", "nan"}


def test_capture_never_raises_on_bad_input(telemetry: Telemetry, capture: CaptureServer) -> None:
    telemetry.capture(None, {"a": 1})  # type: ignore[arg-type]
    telemetry.capture("", {})
    telemetry.capture("x" * 10_000, {})
    telemetry.capture("fine", "not a mapping")  # type: ignore[arg-type]
    telemetry.capture("fine2", {1: 2})  # type: ignore[dict-item]
    assert telemetry.flush(5)
    names = {e["event"] for e in capture.events} - {"new_installation"}
    assert names == {"fine2"}


@pytest.mark.parametrize("kind", ["capture", "request"])
def test_full_queue_drops_and_counts_without_blocking(
    home: Path, capture: CaptureServer, kind: str
) -> None:
    t = Telemetry(
        "visivo", "1.0", api_key="k", host=capture.url, max_queue_size=10, flush_interval=60
    )
    start = time.perf_counter()
    for _ in range(1000):
        if kind == "capture":
            t.capture("e")
        else:  # the middlewares' recorder, which appends to the queue itself while it has room
            t._record_request("GET", 200, 1.0, "/items/{item_id}")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert t.dropped_events >= 989  # new_installation may take one slot
    assert t.status().dropped_events == t.dropped_events
    assert t.flush(5)
    assert len(capture.events) <= 11
    t.shutdown(1)


def test_request_records_after_shutdown_are_counted_not_queued(
    home: Path, capture: CaptureServer
) -> None:
    t = Telemetry("visivo", "1.0", api_key="k", host=capture.url, flush_interval=60)
    t._record_request("GET", 200, 1.0, "/items/{item_id}")
    assert t.flush(5)
    t.shutdown(1)
    before = t.dropped_events
    t._record_request("GET", 200, 1.0, "/items/{item_id}")
    assert t.dropped_events == before + 1
    assert [e["event"] for e in capture.events].count("api_request") == 1


def test_flush_and_shutdown_return_within_their_timeout_with_a_hanging_host(home: Path) -> None:
    server = CaptureServer(mode="hang").start()
    try:
        t = Telemetry("visivo", "1.0", api_key="k", host=server.url, flush_interval=0.01)
        t.capture("e")
        start = time.perf_counter()
        assert t.flush(0.5) is False
        assert time.perf_counter() - start < 1.5
        start = time.perf_counter()
        t.shutdown(0.5)
        assert time.perf_counter() - start < 1.5
        t.capture("after shutdown")  # accepted silently, never raises
    finally:
        server.stop()


def test_opted_out_telemetry_starts_no_thread_and_sends_nothing(
    home: Path, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIVO_TELEMETRY_DISABLED", "1")
    before = set(threading.enumerate())
    t = Telemetry("visivo", "1.0", api_key="k", host=capture.url)
    t.capture("e")
    t._record_request("GET", 200, 1.0, None, "/x")
    assert t.flush(1)
    t.shutdown(1)
    assert set(threading.enumerate()) == before
    assert capture.requests == 0
    assert not (home / ".visivo").exists()


def test_posthog_sink_gives_up_after_repeated_failures() -> None:
    server = CaptureServer(mode="error500").start()
    try:
        sink = PostHogSink("k", server.url, timeout=2)
        results = [sink.send([{"event": "e", "distinct_id": "d", "properties": {}}])]
        while not sink.dead and len(results) < 10:
            results.append(sink.send([{"event": "e", "distinct_id": "d", "properties": {}}]))
        assert sink.dead and not any(results)
        assert len(results) == 5
        assert sink.retry_after > time.monotonic()
    finally:
        server.stop()


def test_rate_limited_batches_wait_for_retry_after() -> None:
    server = CaptureServer(mode="ratelimit").start()
    try:
        sink = PostHogSink("k", server.url, timeout=2)
        assert not sink.send([{"event": "e", "distinct_id": "d", "properties": {}}])
        assert not sink.dead
        assert sink.retry_after - time.monotonic() >= 0.9  # the server says Retry-After: 1
    finally:
        server.stop()


def test_refused_connection_is_retried_later() -> None:
    sink = PostHogSink("k", "http://127.0.0.1:9", timeout=1)  # refused: retried later
    assert not sink.send([{"event": "e"}]) and not sink.dead


def test_no_logger_configuration_is_changed_by_delivery(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    names = ["", "posthog", "urllib3", "urllib3.connectionpool", "requests"]
    before = {
        n: (
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
            list(logging.getLogger(n).handlers),
        )
        for n in names
    }
    telemetry.capture("e")
    assert telemetry.flush(5)
    after = {
        n: (
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
            list(logging.getLogger(n).handlers),
        )
        for n in names
    }
    assert before == after


def _run_script(
    home: Path, source: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(source)],
        env=subprocess_env(home, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc, time.perf_counter() - start


def test_debug_mode_prints_each_event_as_sent_and_sends_nothing(
    home: Path, capture: CaptureServer
) -> None:
    proc, _ = _run_script(
        home,
        f"""
        from telemetry_middleware import Telemetry
        t = Telemetry("visivo", "1.0", api_key="k", host={capture.url!r})
        t.capture("one", {{"n": 1}})
        t._record_request("POST", 201, 2.5, "/items/{{item_id:int}}")
        """,
        VISIVO_TELEMETRY_DEBUG="1",
    )
    assert proc.returncode == 0
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line]
    assert all(line.startswith("[telemetry] {") for line in lines)
    events = [json.loads(line.removeprefix("[telemetry] ")) for line in lines]
    names = [e["event"] for e in events]
    assert names == ["new_installation", "one", "api_request"]
    assert events[2]["properties"]["endpoint"] == "/items/{item_id}"
    assert set(events[1]) == {"event", "distinct_id", "properties", "timestamp", "uuid"}
    time.sleep(0.3)
    assert capture.requests == 0


def test_posthog_is_not_imported_by_the_package_import(home: Path) -> None:
    proc, _ = _run_script(
        home,
        """
        import sys, telemetry_middleware
        from telemetry_middleware import Telemetry
        heavy = ("posthog", "requests", "starlette", "flask", "werkzeug", "fastapi", "yaml")
        bad = [m for m in heavy if m in sys.modules]
        print(bad)
        """,
    )
    assert proc.stdout.strip() == "[]", proc.stderr


def test_fork_parent_and_child_both_deliver(home: Path, capture: CaptureServer) -> None:
    proc, _ = _run_script(
        home,
        f"""
        import os
        from telemetry_middleware import Telemetry
        t = Telemetry("visivo", "1.0", api_key="k", host={capture.url!r}, flush_interval=0.05)
        t.capture("before_fork")
        assert t.flush(5)
        parent_session = t.session_id
        pid = os.fork()
        if pid == 0:
            assert t.session_id != parent_session  # a session is one process
            t.capture("in_child")
            t._record_request("GET", 200, 1.0, "/child/{id}")  # recorder made before the fork
            ok = t.flush(5)
            os._exit(0 if ok else 3)
        t.capture("in_parent")
        assert t.flush(5)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"
    events = capture.wait_for(5)
    names = sorted(e["event"] for e in events)
    assert names == ["api_request", "before_fork", "in_child", "in_parent", "new_installation"]
    session = {e["event"]: e["properties"]["session_id"] for e in events}
    assert session["in_child"] == session["api_request"]
    assert session["in_parent"] == session["before_fork"] != session["in_child"]


def test_exit_hands_pending_events_to_a_detached_sender(home: Path, capture: CaptureServer) -> None:
    proc, _ = _run_script(
        home,
        f"""
        from telemetry_middleware import Telemetry
        t = Telemetry("visivo", "1.0", api_key="k", host={capture.url!r})
        t.capture("short_cli_run")
        """,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    names = sorted(e["event"] for e in capture.wait_for(2, timeout=10))
    assert names == ["new_installation", "short_cli_run"]
    body = decode_body(capture.bodies[0], "", "", "application/json")
    assert body["api_key"] == "k"


def test_exit_never_waits_past_the_timeout_for_a_stuck_worker_setup() -> None:
    """A worker stuck building its identity (a hung home directory) cannot hold the exit."""
    from telemetry_middleware.delivery import DebugSink
    from telemetry_middleware.emitter import Emitter

    class QuietSink(DebugSink):
        def send(self, events: list[dict[str, object]]) -> bool:
            return True

    from telemetry_middleware.events import EventBuilder

    release = threading.Event()
    handed: list[int] = []

    def slow_builder() -> EventBuilder:
        release.wait(10)
        return EventBuilder("id", {}, lambda payload: {})

    def hand_off(builder: EventBuilder, records: list[object]) -> bool:
        handed.append(len(records))
        return True

    emitter = Emitter(slow_builder, QuietSink, hand_off=hand_off, flush_interval=60)
    try:
        emitter.put(("e", time.time(), 0, {}))
        time.sleep(0.1)  # the worker is now inside slow_builder, holding its lock
        start = time.perf_counter()
        emitter.shutdown(0.5, at_exit=True)
        assert time.perf_counter() - start < 1.2
        assert handed == []  # it gave up on the hand-off instead of waiting
    finally:
        release.set()
