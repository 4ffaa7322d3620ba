"""`ASGITelemetryMiddleware` through real Starlette and FastAPI apps, and under uvicorn.

Events are read back from the capture endpoint, exactly as PostHog would receive them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, subprocess_env
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Host, Mount, Route, Router

from telemetry_middleware import Telemetry, asgi
from telemetry_middleware.asgi import ASGITelemetryMiddleware
from telemetry_middleware.capture_server import CaptureServer, decode_body

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the examples package lives at the repository root

UUID = "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"
PREFLIGHT = {"origin": "http://localhost:3000", "access-control-request-method": "GET"}

Message = dict[str, Any]


# -- helpers --


def api_events(capture: CaptureServer, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The properties of the `api_request` events received, once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e["properties"] for e in capture.wait_for(0) if e.get("event") == "api_request"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def sent_text(capture: CaptureServer) -> str:
    """Everything that reached the capture endpoint, decoded (gzip or not), as one string."""
    return " ".join(
        json.dumps(decode_body(raw, "", "", "application/json")) for raw in list(capture.bodies)
    )


def recorded(telemetry: Telemetry, capture: CaptureServer, count: int) -> list[dict[str, Any]]:
    """Flush what an in-process app queued, then read the `count` request events back."""
    assert telemetry.flush(5.0)
    events = api_events(capture, count)
    assert len(events) == count, events
    return events


async def _send_all(
    app: Any, requests: list[tuple[str, str, dict[str, str]]], root_path: str = ""
) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return [await client.request(m, p, headers=h) for m, p, h in requests]


def send(
    app: Any, method: str, path: str, headers: dict[str, str] | None = None, root_path: str = ""
) -> httpx.Response:
    return asyncio.run(_send_all(app, [(method, path, headers or {})], root_path))[0]


def http_scope(path: str, method: str = "GET", root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def example_app(telemetry: Telemetry | None) -> FastAPI:
    from examples.fastapi_app.app import create_app

    return create_app(telemetry)


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app(telemetry: Telemetry) -> Any:
    """Routing cases the example does not have, wrapped (not `add_middleware`)."""
    teams = APIRouter(prefix="/teams")

    @teams.get("/{team_id}")
    async def team(team_id: int) -> dict[str, int]:
        return {"team": team_id}

    team_api = FastAPI()
    team_api.include_router(teams)
    shared = [Route("/things/{thing_id:int}", ok)]
    app = Starlette(
        routes=[
            Route("/only-post/{item}", ok, methods=["POST"]),
            Mount("/v1", routes=shared),
            Mount("/v2", routes=shared),
            Mount("/org/{org}", app=team_api),
            Mount("/nested/{a}", routes=[Mount("/deeper/{b}", routes=[Route("/leaf/{c}", ok)])]),
            Host("{tenant}.example.com", app=Router([Route("/reports/{report_id}", ok)])),
        ]
    )
    return ASGITelemetryMiddleware(app, telemetry=telemetry)


# -- the endpoint of every routing case --

# (app, method, path, extra headers, root_path, expected status, expected endpoint)
ROUTING_CASES: list[tuple[str, str, str, dict[str, str], str, int, str]] = [
    ("example", "GET", "/api/v1/projects/42", {}, "", 200, "/api/v1/projects/{project_id}"),
    (
        "example",
        "GET",
        f"/api/v1/projects/42/charts/{UUID}",
        {},
        "",
        200,
        "/api/v1/projects/{project_id}/charts/{chart_id}",
    ),
    (
        "example",
        "GET",
        "/api/v1/projects/42/files/reports/2024/q1.csv",
        {},
        "",
        200,
        "/api/v1/projects/{project_id}/files/{file_path}",
    ),
    ("example", "GET", "/api/v1/users/alice", {}, "", 200, "/api/v1/users/{username}"),
    (
        "example",
        "GET",
        "/api/v1/projects/7?token=s3cret",
        {},
        "",
        200,
        "/api/v1/projects/{project_id}",
    ),
    ("example", "GET", "/t/acme-corp/dashboard", {}, "", 200, "/t/{tenant}/dashboard"),
    (
        "example",
        "GET",
        "/t/acme-corp/dashboards/d-17",
        {},
        "",
        200,
        "/t/{tenant}/dashboards/{dashboard_id}",
    ),
    ("example", "GET", "/admin/jobs/7", {}, "", 200, "/admin/jobs/{job_id}"),
    ("example", "GET", "/admin/", {}, "", 200, "/admin/"),
    ("example", "GET", "/static/hello.txt", {}, "", 200, "/static/{path}"),
    ("example", "GET", "/static/alice-secret.txt", {}, "", 404, "/static/{path}"),
    ("example", "GET", "/stream", {}, "", 200, "/stream"),
    ("example", "DELETE", "/api/v1/users/alice", {}, "", 405, "/api/v1/users/{username}"),
    ("example", "GET", "/api/v1/projects/42/", {}, "", 307, "/api/v1/projects/{id}/"),
    ("example", "GET", "/users/jane.doe@example.com/12345", {}, "", 404, "/users/{email}/{id}"),
    ("example", "GET", "/acme-corp/jane@example.com/42", {}, "", 404, "/{value}/{email}/{id}"),
    ("example", "GET", "/admin/acme-corp/42", {}, "", 404, "/admin/{value}/{id}"),
    ("example", "OPTIONS", "/api/v1/users/alice", PREFLIGHT, "", 200, "/api/v1/users/{value}"),
    ("example", "GET", "/proxy/api/v1/users/alice", {}, "/proxy", 200, "/api/v1/users/{username}"),
    ("example", "GET", "/proxy/t/acme-corp/dashboard", {}, "/proxy", 200, "/t/{tenant}/dashboard"),
    ("example", "GET", "/proxy/nope/a@b.example", {}, "/proxy", 404, "/{value}/{email}"),
    ("starlette", "GET", "/v1/things/3", {}, "", 200, "/v1/things/{thing_id}"),
    ("starlette", "GET", "/v2/things/3", {}, "", 200, "/v2/things/{thing_id}"),
    ("starlette", "GET", "/org/acme-corp/teams/5", {}, "", 200, "/org/{org}/teams/{team_id}"),
    (
        "starlette",
        "GET",
        "/nested/x1/deeper/y2/leaf/z3",
        {},
        "",
        200,
        "/nested/{a}/deeper/{b}/leaf/{c}",
    ),
    ("starlette", "GET", "/only-post/abc", {}, "", 405, "/only-post/{item}"),
    (
        "starlette",
        "GET",
        "/reports/9",
        {"host": "acme-corp.example.com"},
        "",
        200,
        "/reports/{report_id}",
    ),
    ("starlette", "GET", "/reports/9", {}, "", 404, "/reports/{id}"),
]


@pytest.mark.parametrize(
    ("kind", "method", "path", "headers", "root_path", "status", "endpoint"),
    ROUTING_CASES,
    ids=[f"{c[0]}:{c[1]} {c[2]}" for c in ROUTING_CASES],
)
def test_endpoint_of_each_routing_case(
    telemetry: Telemetry,
    capture: CaptureServer,
    kind: str,
    method: str,
    path: str,
    headers: dict[str, str],
    root_path: str,
    status: int,
    endpoint: str,
) -> None:
    app = example_app(telemetry) if kind == "example" else starlette_app(telemetry)
    response = send(app, method, path, headers, root_path)
    assert response.status_code == status
    [event] = recorded(telemetry, capture, 1)
    assert event["endpoint"] == endpoint
    assert event["status_code"] == status
    assert event["method"] == method
    for value in ("acme", "alice", "jane", "12345", "s3cret", "proxy", "a@b", "x1", "y2", "z3"):
        assert value not in event["endpoint"]
    sent = sent_text(capture)  # everything that left: ids are random hex, so words only
    assert event["endpoint"] in sent
    for word in ("acme", "alice", "jane", "s3cret", "proxy", "a@b", "token"):
        assert word not in sent


def test_route_index_is_built_once_and_requests_only_look_it_up(
    telemetry: Telemetry, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[object] = []
    real_build = asgi._RouteIndex.build

    def counting_build(owner: object) -> asgi._RouteIndex:
        builds.append(owner)
        return real_build(owner)

    monkeypatch.setattr(asgi._RouteIndex, "build", staticmethod(counting_build))
    app = example_app(telemetry)
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", f"/api/v1/projects/{i}", {}) for i in range(30)
    ]
    requests += [("GET", f"/t/tenant-{i}/dashboard", {}) for i in range(30)]
    requests += [("GET", f"/missing/{i}", {}) for i in range(30)]
    asyncio.run(_send_all(app, requests))
    events = recorded(telemetry, capture, 90)
    assert len(builds) == 1
    assert {e["endpoint"] for e in events} == {
        "/api/v1/projects/{project_id}",
        "/t/{tenant}/dashboard",
        "/{value}/{id}",
    }


def test_unknown_endpoints_are_remembered_in_a_bounded_set(telemetry: Telemetry) -> None:
    """An app that puts a new endpoint object in every scope cannot make memory grow."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["endpoint"] = object()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ASGITelemetryMiddleware(app, telemetry=telemetry)

    async def main() -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def drop(message: Any) -> None:
            pass

        for _ in range(asgi._MAX_MISSES + 200):
            await middleware(http_scope("/x"), receive, drop)

    asyncio.run(main())
    assert 0 < len(middleware._misses) <= asgi._MAX_MISSES
    telemetry.flush(5.0)


def test_routes_added_after_the_first_request_get_their_template(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    app = Starlette(routes=[Route("/early/{x}", ok)])
    wrapped = ASGITelemetryMiddleware(app, telemetry=telemetry)
    send(wrapped, "GET", "/early/1")

    async def late(request: Request) -> PlainTextResponse:
        return PlainTextResponse("late")

    app.router.routes.append(Route("/late/{thing}", late))
    assert send(wrapped, "GET", "/late/secret-thing").text == "late"
    events = recorded(telemetry, capture, 2)
    assert [e["endpoint"] for e in events] == ["/early/{x}", "/late/{thing}"]


# -- status codes --


def test_unknown_method_becomes_one_placeholder(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    response = send(example_app(telemetry), "BREW", "/api/v1/users/alice")
    assert response.status_code == 405
    [event] = recorded(telemetry, capture, 1)
    assert event["method"] == "OTHER"
    assert event["endpoint"] == "/api/v1/users/{username}"


def test_exception_before_response_is_500_and_propagates_unchanged(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    raised: list[BaseException] = []

    async def boom(request: Request) -> Response:
        try:
            raise LookupError("secret-table-name")
        except LookupError as exc:
            raised.append(exc)
            raise

    def run(app: Any) -> pytest.ExceptionInfo[LookupError]:
        with pytest.raises(LookupError) as info:
            send(app, "GET", "/boom/7")
        return info

    bare = Starlette(routes=[Route("/boom/{n}", boom)])
    bare_info = run(bare)
    ours = Starlette(
        routes=[Route("/boom/{n}", boom)],
        middleware=[Middleware(ASGITelemetryMiddleware, telemetry=telemetry)],
    )
    info = run(ours)
    assert info.value is raised[1]
    assert type(info.value) is type(bare_info.value)
    assert info.value.args == ("secret-table-name",)
    # The traceback still ends at the raising line, and holds every frame it held without us.
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    bare_frames = [f.name for f in traceback.extract_tb(bare_info.value.__traceback__)]
    assert frames[-1] == bare_frames[-1] == "boom"
    assert "__call__" in frames
    remaining = iter(frames)
    assert all(name in remaining for name in bare_frames)  # a subsequence
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/boom/{n}", 500)
    assert "secret" not in sent_text(capture)


def test_example_boom_endpoint_is_500(telemetry: Telemetry, capture: CaptureServer) -> None:
    with pytest.raises(RuntimeError, match="chart renderer"):
        send(example_app(telemetry), "GET", "/boom")
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/boom", 500)


def test_failure_mid_body_is_500(telemetry: Telemetry, capture: CaptureServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"part one"
        raise ValueError("stream broke")

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks())

    app = ASGITelemetryMiddleware(
        Starlette(routes=[Route("/export/{n}", stream)]), telemetry=telemetry
    )
    with pytest.raises(ValueError, match="stream broke"):
        send(app, "GET", "/export/3")
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/export/{n}", 500)


def _receive_then_disconnect() -> Any:
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def test_client_gone_before_the_response_is_499(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    """The long poll sees the client leave and answers anyway: the answer went nowhere."""
    app = example_app(telemetry)
    sent: list[Message] = []

    async def collect(message: Any) -> None:
        sent.append(message)

    scope = http_scope("/api/v1/events/wait")
    asyncio.run(app(scope, _receive_then_disconnect(), collect))
    assert sent[0]["status"] == 200  # the app did answer: the server would drop it
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/api/v1/events/wait", 499)


@pytest.mark.parametrize("kind", ["ClientDisconnect", "ConnectionResetError"])
def test_disconnect_errors_are_499_and_propagate(
    telemetry: Telemetry, capture: CaptureServer, kind: str
) -> None:
    async def upload(request: Request) -> Response:
        if kind == "ClientDisconnect":
            await request.body()  # raises: the client left mid-upload
        raise ConnectionResetError("peer went away")

    # Inside Starlette's error middleware, as `add_middleware` puts it: the exception reaches
    # us before anything answered it.
    app = Starlette(
        routes=[Route("/upload/{n}", upload, methods=["POST"])],
        middleware=[Middleware(ASGITelemetryMiddleware, telemetry=telemetry)],
    )

    async def nothing(message: Any) -> None:
        pass

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    expected = ClientDisconnect if kind == "ClientDisconnect" else ConnectionResetError
    with pytest.raises(expected):
        asyncio.run(app(http_scope("/upload/1", "POST"), receive, nothing))
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/upload/{n}", 499)


def test_app_returning_without_a_response_is_500(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def nothing(message: Any) -> None:
        pass

    asyncio.run(
        ASGITelemetryMiddleware(silent, telemetry=telemetry)(
            http_scope("/quiet/1"), _receive_then_disconnect(), nothing
        )
    )
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/quiet/{id}", 500)


# -- timing and transparency --


def test_background_task_time_is_not_in_the_duration(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    from examples.fastapi_app import app as example

    done_before = len(example.runs_done)
    started = time.perf_counter()
    response = send(example_app(telemetry), "POST", "/api/v1/projects/5/runs")
    elapsed = time.perf_counter() - started
    assert response.status_code == 202
    assert elapsed >= example.BACKGROUND_SECONDS  # the app call included the task...
    assert example.runs_done[done_before:] == [5]
    [event] = recorded(telemetry, capture, 1)
    assert event["endpoint"] == "/api/v1/projects/{project_id}/runs"
    assert 0 < event["duration_ms"] < 250  # ...the recorded duration did not


def test_streaming_chunks_pass_through_as_they_are_produced(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    """The first chunk reaches the server while the app is still waiting to make the next."""

    async def main() -> list[Message]:
        release = asyncio.Event()
        produced: list[str] = []

        async def chunks() -> AsyncIterator[bytes]:
            produced.append("first")
            yield b"first"
            await release.wait()
            produced.append("second")
            yield b"second"

        async def stream(request: Request) -> StreamingResponse:
            return StreamingResponse(chunks(), media_type="text/plain")

        app = ASGITelemetryMiddleware(
            Starlette(routes=[Route("/stream/{n}", stream)]), telemetry=telemetry
        )
        arrived: asyncio.Queue[Message] = asyncio.Queue()
        never = asyncio.Event()

        async def receive() -> Message:
            await never.wait()
            return {"type": "http.disconnect"}

        async def server_send(message: Any) -> None:
            await arrived.put(message)

        task = asyncio.create_task(app(http_scope("/stream/1"), receive, server_send))
        start = await asyncio.wait_for(arrived.get(), 5)
        first = await asyncio.wait_for(arrived.get(), 5)
        assert (start["type"], first["body"], first["more_body"]) == (
            "http.response.start",
            b"first",
            True,
        )
        assert produced == ["first"] and not task.done()
        release.set()
        await asyncio.wait_for(task, 5)
        rest = []
        while not arrived.empty():
            rest.append(arrived.get_nowait())
        return [start, first, *rest]

    messages = asyncio.run(main())
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert body == b"firstsecond"
    assert messages[-1].get("more_body", False) is False
    [event] = recorded(telemetry, capture, 1)
    assert (event["endpoint"], event["status_code"]) == ("/stream/{n}", 200)


def test_messages_and_scope_pass_through_as_the_same_objects(telemetry: Telemetry) -> None:
    """What the app sends is what the server gets (same objects, same order), and back."""
    app_sent: list[Any] = []
    app_received: list[Any] = []
    server_got: list[Any] = []
    server_gave: list[Any] = []
    seen_scope: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen_scope.append(scope)
        app_received.append(await receive())
        for message in (
            {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]},
            {"type": "http.response.body", "body": b"ab", "more_body": True},
            {"type": "http.response.body", "body": b"cd"},
        ):
            app_sent.append(message)
            await send(message)

    async def main() -> None:
        async def receive() -> Message:
            message = {"type": "http.request", "body": b"payload"}
            server_gave.append(message)
            return message

        async def server_send(message: Any) -> None:
            server_got.append(message)

        scope = http_scope("/anything")
        await ASGITelemetryMiddleware(app, telemetry=telemetry)(scope, receive, server_send)
        assert seen_scope == [scope]

    asyncio.run(main())
    assert len(server_got) == 3
    assert all(a is b for a, b in zip(app_sent, server_got, strict=True))
    assert app_received[0] is server_gave[0]
    telemetry.flush(5.0)


def test_concurrent_requests_keep_their_own_status_and_timing(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    """Per-request state lives in each call's closures: interleaved requests do not mix."""

    async def answer(request: Request) -> PlainTextResponse:
        code = int(request.path_params["code"])
        await asyncio.sleep(0.01 * (code % 7))
        return PlainTextResponse(str(code), status_code=code)

    app = ASGITelemetryMiddleware(
        Starlette(routes=[Route("/status/{code}", answer)]), telemetry=telemetry
    )
    codes = [200, 201, 202, 204, 400, 401, 403, 404, 409, 418, 422, 429, 500, 502, 503] * 2

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(client.get(f"/status/{c}") for c in codes))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == codes
    events = recorded(telemetry, capture, len(codes))
    assert sorted(e["status_code"] for e in events) == sorted(codes)
    assert {e["endpoint"] for e in events} == {"/status/{code}"}
    for event in events:  # each duration is its own request's sleep, not a neighbour's
        assert event["duration_ms"] >= 10 * (event["status_code"] % 7) * 0.9


def test_context_variables_flow_through(telemetry: Telemetry, capture: CaptureServer) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")

    async def show(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request_id.get("unset"))

    inner = ASGITelemetryMiddleware(Starlette(routes=[Route("/id", show)]), telemetry=telemetry)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        request_id.set("req-1")
        await inner(scope, receive, send)

    assert send(outer, "GET", "/id").text == "req-1"
    recorded(telemetry, capture, 1)


EXAMPLE_REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/", {}),
    ("GET", "/health", {}),
    ("GET", "/api/v1/projects/42", {}),
    ("GET", f"/api/v1/projects/42/charts/{UUID}", {}),
    ("GET", "/api/v1/projects/42/files/a/b/c.csv", {}),
    ("GET", "/api/v1/projects/not-a-number", {}),
    ("POST", "/api/v1/projects/42/runs", {}),
    ("GET", "/api/v1/users/alice", {}),
    ("DELETE", "/api/v1/users/alice", {}),
    ("GET", "/api/v1/projects/42/", {}),
    ("GET", "/admin/", {}),
    ("GET", "/admin/jobs/7", {}),
    ("GET", "/admin/nope", {}),
    ("GET", "/t/acme-corp/dashboard", {}),
    ("GET", "/static/hello.txt", {}),
    ("GET", "/static/missing.txt", {}),
    ("GET", "/stream", {}),
    ("GET", "/nope/jane@example.com", {}),
    ("OPTIONS", "/api/v1/users/alice", PREFLIGHT),
    ("GET", "/api/v1/users/alice", {"origin": "http://localhost:3000"}),
    ("HEAD", "/static/hello.txt", {}),
    ("GET", "/openapi.json", {}),
]


def test_responses_are_identical_with_and_without_the_middleware(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    bare = asyncio.run(_send_all(example_app(None), EXAMPLE_REQUESTS))
    ours = asyncio.run(_send_all(example_app(telemetry), EXAMPLE_REQUESTS))
    for request, a, b in zip(EXAMPLE_REQUESTS, bare, ours, strict=True):
        assert a.status_code == b.status_code, request
        assert a.headers.raw == b.headers.raw, request
        assert a.content == b.content, request
    events = recorded(telemetry, capture, len(EXAMPLE_REQUESTS))
    assert [e["status_code"] for e in events] == [r.status_code for r in ours]


def test_websocket_and_lifespan_scopes_are_untouched(telemetry: Telemetry) -> None:
    calls: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))

    middleware = ASGITelemetryMiddleware(app, telemetry=telemetry)

    async def receive() -> Message:
        return {}

    async def send_(message: Any) -> None:
        pass

    for kind in ("websocket", "lifespan"):
        scope = {"type": kind, "asgi": {"version": "3.0"}, "path": "/ws"}
        snapshot = dict(scope)
        asyncio.run(middleware(scope, receive, send_))
        assert calls[-1][0] is scope and scope == snapshot
        assert calls[-1][1] is receive and calls[-1][2] is send_
    assert telemetry._emitter is not None and telemetry._emitter.pending == 0


def test_websocket_echo_and_lifespan_work_through_the_example(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    """Drive the example as a server would: lifespan startup, a WebSocket echo, one request."""
    app = example_app(telemetry)

    async def converse(scope: dict[str, Any], incoming: list[Message]) -> list[Message]:
        """Run one connection: feed `incoming`, then wait; return what the app sent."""
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        for message in incoming:
            inbox.put_nowait(message)
        out: list[Message] = []

        async def receive() -> Message:
            return await inbox.get()

        async def server_send(message: Any) -> None:
            out.append(message)
            if message["type"] == "websocket.send":
                inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
            elif message["type"] == "lifespan.startup.complete":
                inbox.put_nowait({"type": "lifespan.shutdown"})

        await asyncio.wait_for(app(scope, receive, server_send), 5)
        return out

    async def main() -> tuple[list[Message], list[Message], bool]:
        lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        ws_scope = {
            **http_scope("/ws/echo"),
            "type": "websocket",
            "scheme": "ws",
            "subprotocols": [],
        }
        startup = converse(lifespan, [{"type": "lifespan.startup"}])
        life = await startup
        started = bool(app.state.started)
        ws = await converse(
            ws_scope,
            [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hello"}],
        )
        return life, ws, started

    life, ws, started = asyncio.run(main())
    assert started  # the lifespan ran
    assert [m["type"] for m in life] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [m["type"] for m in ws] == ["websocket.accept", "websocket.send"]
    assert ws[1]["text"] == "hello"
    # The lifespan's shutdown shut the telemetry down: nothing was queued for the WebSocket.
    assert api_events(capture, 1, timeout=0.5) == []


def test_internal_failures_never_break_a_request(
    telemetry: Telemetry, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = send(example_app(None), "GET", "/api/v1/projects/42")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("telemetry bug")

    monkeypatch.setattr(telemetry, "_record_request", broken)
    response = send(example_app(telemetry), "GET", "/api/v1/projects/42")
    assert (response.status_code, response.content) == (expected.status_code, expected.content)
    with pytest.raises(RuntimeError, match="chart renderer"):  # the app's own, not ours
        send(example_app(telemetry), "GET", "/boom")

    monkeypatch.undo()
    monkeypatch.setattr(asgi._RouteIndex, "build", broken)
    for path in ("/api/v1/projects/42", "/nope/1"):
        response = send(example_app(telemetry), "GET", path)
        assert response.status_code in (200, 404)
    assert send(example_app(telemetry), "GET", "/api/v1/projects/42").json()["id"] == 42


def test_disabled_telemetry_is_a_pure_pass_through(home: Path, capture: CaptureServer) -> None:
    off = Telemetry(
        "visivo",
        "1.4.0",
        api_key="phc_test",
        host=capture.url,
        environ={"HOME": str(home), "CI": "false", "VISIVO_TELEMETRY_DISABLED": "1"},
    )
    assert not off.enabled
    calls: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send_(message: Any) -> None:
        pass

    scope = http_scope("/a/1")
    asyncio.run(ASGITelemetryMiddleware(app, telemetry=off)(scope, receive, send_))
    assert calls == [(scope, receive, send_)]
    bare = asyncio.run(_send_all(example_app(None), EXAMPLE_REQUESTS))
    ours = asyncio.run(_send_all(example_app(off), EXAMPLE_REQUESTS))
    assert [(r.status_code, r.content) for r in bare] == [(r.status_code, r.content) for r in ours]
    time.sleep(0.2)
    assert capture.wait_for(0) == [] and capture.requests == 0
    assert off._emitter is None


# -- under a real server --


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def uvicorn_server(home: Path, capture: CaptureServer) -> Iterator[str]:
    """The example app under uvicorn behind a `/proxy` root path, sending to `capture`."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_app.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--root-path",
            "/proxy",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=subprocess_env(home, VISIVO_POSTHOG_HOST=capture.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_under_uvicorn_root_path_streaming_and_disconnect(
    uvicorn_server: str, capture: CaptureServer
) -> None:
    from examples.fastapi_app import app as example

    with httpx.Client(base_url=uvicorn_server, timeout=10) as client:
        # The proxy in front strips `/proxy`; uvicorn's --root-path puts it back in the scope.
        assert client.get("/api/v1/users/alice").json() == {"username": "alice"}
        assert client.get("/nope/jane@example.com").status_code == 404
        # Chunks arrive as the app makes them, not all at the end.
        arrivals: list[float] = []
        started = time.perf_counter()
        with client.stream("GET", "/stream") as response:
            for chunk in response.iter_raw():
                if chunk:
                    arrivals.append(time.perf_counter() - started)
        total_delay = example.STREAM_DELAY * (example.STREAM_CHUNKS - 1)
        assert len(arrivals) >= 3
        assert arrivals[-1] - arrivals[0] >= total_delay * 0.6

    # A client that leaves before the long poll answers.
    host, port = uvicorn_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"GET /api/v1/events/wait HTTP/1.1\r\nHost: demo\r\n\r\n")
        # Long enough for a loaded machine's server to have handed the request to the app:
        # a request closed before that never reaches the app, and makes no event at all.
        time.sleep(1.0)

    events = api_events(capture, 4, timeout=15)
    by_endpoint = {e["endpoint"]: e for e in events}
    assert by_endpoint["/api/v1/users/{username}"]["status_code"] == 200
    assert by_endpoint["/{value}/{email}"]["status_code"] == 404
    stream = by_endpoint["/stream"]
    assert stream["status_code"] == 200
    assert stream["duration_ms"] >= total_delay * 1000 * 0.9  # ends at the last chunk
    assert by_endpoint["/api/v1/events/wait"]["status_code"] == 499
    assert all("proxy" not in e["endpoint"] for e in events)
    assert "jane" not in sent_text(capture)
