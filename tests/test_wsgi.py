"""`WSGITelemetryMiddleware` through real Flask and Werkzeug apps, and under real servers.

Events are read back from the capture endpoint, exactly as PostHog would receive them.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from conftest import PYTHON, ROOT, subprocess_env
from flask import Flask, Response, stream_with_context
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response as WerkzeugResponse

from telemetry_middleware import Telemetry, wsgi
from telemetry_middleware.capture_server import CaptureServer
from telemetry_middleware.wsgi import WSGITelemetryMiddleware

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the examples package lives at the repository root

UUID = "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"
GUNICORN = str(Path(sys.executable).parent / "gunicorn")

Environ = dict[str, Any]
Headers = list[tuple[str, str]]


# -- helpers --


def api_events(capture: CaptureServer, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The `api_request` events received (whole events), once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in capture.wait_for(0) if e.get("event") == "api_request"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def recorded(telemetry: Telemetry, capture: CaptureServer, count: int) -> list[dict[str, Any]]:
    """Flush what an in-process app queued, then read exactly `count` request events back."""
    assert telemetry.flush(5.0)
    events = api_events(capture, count)
    time.sleep(0.05)  # a duplicate would arrive in the same flush
    events = api_events(capture, count)
    assert len(events) == count, [e["properties"] for e in events]
    return [e["properties"] for e in events]


def triple(props: dict[str, Any]) -> tuple[str, str, int]:
    return props["method"], props["endpoint"], props["status_code"]


def environ_for(path: str = "/", method: str = "GET", **kwargs: Any) -> Environ:
    builder = EnvironBuilder(path=path, method=method, **kwargs)
    try:
        return builder.get_environ()
    finally:
        builder.close()


class Server:
    """A fake WSGI server's side of one request: what start_response received."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Headers, Any]] = []

    def start_response(
        self, status: str, headers: Headers, exc_info: Any = None
    ) -> Callable[[bytes], object]:
        self.calls.append((status, headers, exc_info))
        return lambda data: None


def run_wsgi(app: Any, environ: Environ) -> tuple[str, Headers, list[bytes]]:
    """Drive one request as a PEP 3333 server does: call, iterate, close."""
    server = Server()
    body = app(environ, server.start_response)
    try:
        chunks = list(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers, _ = server.calls[-1]
    return status, headers, chunks


@pytest.fixture
def example(home: Path) -> ModuleType:
    """The Flask example module, imported once HOME points at the test's own home."""
    import examples.flask_app.app as module

    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the endpoint of each routing case --

ROUTING_CASES: list[tuple[str, str, dict[str, Any], int, tuple[str, str, int]]] = [
    # (method, path, test-client options, status, (method, endpoint, status) sent)
    ("GET", "/api/users/424242", {}, 200, ("GET", "/api/users/{user_id}", 200)),
    (
        "GET",
        "/api/users/424242?email=jane@example.com",
        {},
        200,
        ("GET", "/api/users/{user_id}", 200),
    ),
    ("HEAD", "/api/users/424242", {}, 200, ("HEAD", "/api/users/{user_id}", 200)),
    ("OPTIONS", "/api/users/424242", {}, 200, ("OPTIONS", "/api/users/{user_id}", 200)),
    ("PUT", "/api/users/7", {"json": {"name": "Ann"}}, 200, ("PUT", "/api/users/{user_id}", 200)),
    ("GET", "/api/users/99", {}, 404, ("GET", "/api/users/{user_id}", 404)),  # abort() in a view
    (
        "GET",
        f"/api/users/424242/orders/{UUID}",
        {},
        200,
        ("GET", "/api/users/{user_id}/orders/{order_id}", 200),
    ),
    ("GET", "/api/users/by-name/jane", {}, 200, ("GET", "/api/users/by-name/{username}", 200)),
    (
        "GET",
        f"/api/projects/{UUID}/files/data/2024/sales.csv",
        {},
        200,
        ("GET", "/api/projects/{project_id}/files/{file_path}", 200),
    ),
    ("POST", "/api/projects", {"json": {"name": "q3"}}, 201, ("POST", "/api/projects", 201)),
    ("DELETE", "/api/users/424242", {}, 405, ("DELETE", "/api/users/{user_id}", 405)),
    (
        "POST",
        f"/api/users/424242/orders/{UUID}",
        {},
        405,
        ("POST", "/api/users/{user_id}/orders/{order_id}", 405),
    ),
    ("PROPFIND", "/api/users/424242", {}, 405, ("OTHER", "/api/users/{user_id}", 405)),
    ("GET", "/docs", {}, 308, ("GET", "/docs", 308)),
    ("GET", "/nope/jane.doe@example.com/424242", {}, 404, ("GET", "/{value}/{email}/{id}", 404)),
    ("GET", "/api/users/jane.doe@example.com", {}, 404, ("GET", "/api/users/{email}", 404)),
    ("GET", "/api/users/424242/secret-thing", {}, 404, ("GET", "/api/users/{id}/{value}", 404)),
    ("GET", "/boom", {}, 500, ("GET", "/boom", 500)),
    ("GET", "/stream?chunks=3&delay=0", {}, 200, ("GET", "/stream", 200)),
    ("GET", "/download", {}, 200, ("GET", "/download", 200)),
    # Mounted under a prefix: SCRIPT_NAME is the deployment's, never part of the endpoint.
    (
        "GET",
        "/api/users/424242",
        {"base_url": "http://localhost/visivo"},
        200,
        ("GET", "/api/users/{user_id}", 200),
    ),
    (
        "GET",
        "/visivo-nope/7",
        {"base_url": "http://localhost/visivo"},
        404,
        ("GET", "/{value}/{id}", 404),
    ),
]


def test_endpoint_of_each_flask_routing_case(
    example: ModuleType, telemetry: Telemetry, capture: CaptureServer
) -> None:
    client = example.create_app(telemetry).test_client()
    for method, path, options, status, _ in ROUTING_CASES:
        response = client.open(path, method=method, buffered=True, **options)
        response.close()
        assert response.status_code == status, (method, path)
    events = recorded(telemetry, capture, len(ROUTING_CASES))
    assert [triple(e) for e in events] == [case[4] for case in ROUTING_CASES]
    sent = json.dumps(events)
    for secret in ("424242", UUID, "jane", "sales.csv", "visivo-nope", "/visivo/", "email="):
        assert secret not in sent


def test_flask_app_behind_other_middleware_still_gives_its_rule(
    example: ModuleType, telemetry: Telemetry, capture: CaptureServer
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = example.create_app(None)
    app.wsgi_app = WSGITelemetryMiddleware(ProxyFix(app.wsgi_app), telemetry=telemetry)
    with app.test_client() as client:  # `with`: Flask's own context hand-over is chained
        client.get("/api/users/424242", buffered=True).close()
        client.get("/nope/424242", buffered=True).close()
    assert [triple(e) for e in recorded(telemetry, capture, 2)] == [
        ("GET", "/api/users/{user_id}", 200),
        ("GET", "/{value}/{id}", 404),  # the app's map is still found for static segments
    ]


def test_flask_contexts_are_let_go_when_the_app_returns(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    """The rule is read at once: Flask's request is not kept alive while the body streams."""
    import gc
    import weakref

    from flask import request

    app = Flask("contexts")
    requests: list[weakref.ref[Any]] = []

    @app.get("/reports/<int:report_id>")
    def report(report_id: int) -> Response:
        requests.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        return Response(iter([b"a", b"b"]))

    app.wsgi_app = WSGITelemetryMiddleware(app.wsgi_app, telemetry=telemetry)  # type: ignore[method-assign]
    body = app(environ_for("/reports/424242"), Server().start_response)
    gc.collect()
    assert requests[0]() is None  # nothing of ours holds the request before the body is read
    assert b"".join(body) == b"ab"
    body.close()  # type: ignore[attr-defined]
    assert [triple(e) for e in recorded(telemetry, capture, 1)] == [
        ("GET", "/reports/{report_id}", 200)
    ]


def test_flask_called_only_while_the_body_is_iterated_still_gives_its_rule(
    example: ModuleType, telemetry: Telemetry, capture: CaptureServer
) -> None:
    """A wrapper that defers the app until iteration: the rule arrives after the call returns."""
    flask_app = example.create_app(None)

    def deferred(environ: Environ, start_response: Any) -> Iterator[bytes]:
        body = flask_app.wsgi_app(environ, start_response)
        try:
            yield from body
        finally:
            getattr(body, "close", lambda: None)()

    middleware = WSGITelemetryMiddleware(deferred, telemetry=telemetry)
    status, _, chunks = run_wsgi(middleware, environ_for("/api/users/424242"))
    assert status.startswith("200") and chunks
    assert [triple(e) for e in recorded(telemetry, capture, 1)] == [
        ("GET", "/api/users/{user_id}", 200)
    ]


# -- a plain Werkzeug app with a Map --

URL_MAP = Map(
    [
        Rule("/items/", endpoint="items"),
        Rule("/items/<int:item_id>", endpoint="item", methods=["GET"]),
        Rule("/files/<path:name>", endpoint="file"),
    ]
)


class Shop:
    """A plain Werkzeug app in the style of Werkzeug's tutorial: a Map and a dispatcher."""

    def __init__(self) -> None:
        self.url_map = URL_MAP

    def wsgi_app(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        adapter = self.url_map.bind_to_environ(environ)
        response: Any
        try:
            endpoint, values = adapter.match()
            response = WerkzeugResponse(f"{endpoint} {values}")
        except HTTPException as exc:
            response = exc
        return response(environ, start_response)  # type: ignore[no-any-return]


WERKZEUG_CASES = [
    ("GET", "/items/5", 200, ("GET", "/items/{item_id}", 200)),
    ("HEAD", "/items/5", 200, ("HEAD", "/items/{item_id}", 200)),
    ("POST", "/items/5", 405, ("POST", "/items/{item_id}", 405)),
    ("GET", "/items", 308, ("GET", "/items", 308)),
    ("GET", "/files/caf\u00e9/menu.pdf", 200, ("GET", "/files/{name}", 200)),
    ("GET", "/secret/jane@example.com", 404, ("GET", "/{value}/{email}", 404)),
]


@pytest.mark.parametrize("how", ["discovered", "passed"])
def test_plain_werkzeug_map_is_matched_once_at_the_end(
    how: str, telemetry: Telemetry, capture: CaptureServer
) -> None:
    shop = Shop()
    if how == "discovered":  # found as `url_map` on the owner of the bound method
        app = WSGITelemetryMiddleware(shop.wsgi_app, telemetry=telemetry)
    else:

        def bare(environ: Environ, start_response: Any) -> Iterable[bytes]:
            return shop.wsgi_app(environ, start_response)

        app = WSGITelemetryMiddleware(bare, telemetry=telemetry, url_map=URL_MAP)
    assert app.url_map is URL_MAP
    for method, path, status, _ in WERKZEUG_CASES:
        environ = environ_for(path, method)
        assert run_wsgi(app, environ)[0].startswith(str(status)), path
    events = recorded(telemetry, capture, len(WERKZEUG_CASES))
    assert [triple(e) for e in events] == [case[3] for case in WERKZEUG_CASES]


def test_any_wsgi_app_gets_the_regex_fallback_or_a_rule_it_reports(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"].startswith("/reports/"):
            environ[wsgi.RULE_KEY] = "/reports/<report_id>"  # a framework telling its rule
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    mw = WSGITelemetryMiddleware(app, telemetry=telemetry)
    for path in ("/reports/q3-2024", "/orders/12345/items/jane@example.com", "/caf\u00c3\u00a9"):
        run_wsgi(mw, environ_for(path))
    raw = environ_for("/")
    raw["PATH_INFO"] = "/caf\xc3\xa9/7"  # WSGI: the raw bytes as latin-1, passed as they are
    run_wsgi(mw, raw)
    assert [e["endpoint"] for e in recorded(telemetry, capture, 4)] == [
        "/reports/{report_id}",
        "/orders/{id}/items/{email}",
        "/{value}",
        "/{value}/{id}",
    ]


# -- status, timing, transparency --


def test_responses_are_identical_with_and_without_the_middleware(
    example: ModuleType, telemetry: Telemetry, capture: CaptureServer
) -> None:
    bare = example.create_app(None)
    ours = example.create_app(telemetry)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/users/424242", {}),
        ("HEAD", "/api/users/424242", {}),
        ("OPTIONS", "/api/users/424242", {}),
        ("PUT", "/api/users/8", {"json": {"name": "Bo"}}),
        ("GET", f"/api/users/424242/orders/{UUID}?x=1", {}),
        ("DELETE", "/api/users/424242", {}),
        ("GET", "/docs", {}),
        ("GET", "/nope/jane@example.com", {}),
        ("GET", "/stream?chunks=4&delay=0", {}),
        ("GET", "/download", {}),
        ("GET", "/boom", {}),
    ]
    for method, path, options in requests:
        out = []
        for app in (bare, ours):
            environ = environ_for(
                path.split("?")[0], method, query_string=path.partition("?")[2], **options
            )
            out.append(run_wsgi(app, environ))
        assert out[0] == out[1], (method, path)  # status line, header list, every chunk
    assert len(recorded(telemetry, capture, len(requests))) == len(requests)


def test_exception_from_the_app_propagates_unchanged_and_is_500(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    error = LookupError("secret-table-name")

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        raise error

    with pytest.raises(LookupError) as info:
        WSGITelemetryMiddleware(app, telemetry=telemetry)(
            environ_for("/x"), Server().start_response
        )
    assert info.value is error
    assert info.value.__context__ is None and info.value.__cause__ is None

    flask_app = Flask("propagating")
    flask_app.config["PROPAGATE_EXCEPTIONS"] = True

    @flask_app.get("/users/<int:user_id>")
    def user(user_id: int) -> str:
        raise error

    flask_app.wsgi_app = WSGITelemetryMiddleware(flask_app.wsgi_app, telemetry=telemetry)  # type: ignore[method-assign]
    with pytest.raises(LookupError) as info2:
        flask_app(environ_for("/users/5"), Server().start_response)
    assert info2.value is error
    events = recorded(telemetry, capture, 2)
    assert [triple(e) for e in events] == [("GET", "/x", 500), ("GET", "/users/{user_id}", 500)]
    assert "secret-table-name" not in json.dumps(events)


def test_exception_while_iterating_propagates_unchanged_and_is_500(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    error = OSError("disk gone")
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"first"
            raise error

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    body = WSGITelemetryMiddleware(app, telemetry=telemetry)(
        environ_for("/x"), Server().start_response
    )
    got = []
    with pytest.raises(OSError) as info:
        for chunk in body:
            got.append(chunk)
    body.close()  # type: ignore[attr-defined]
    assert info.value is error and got == [b"first"] and closed == [True]
    assert [triple(e) for e in recorded(telemetry, capture, 1)] == [("GET", "/x", 500)]


def test_generator_app_calling_start_response_late_gets_its_status(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    def late(environ: Environ, start_response: Any) -> Iterator[bytes]:
        time.sleep(0.05)  # work done inside the iterable is part of the duration
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b"made"

    mw = WSGITelemetryMiddleware(late, telemetry=telemetry)
    status, _, chunks = run_wsgi(mw, environ_for("/things", "POST"))
    assert status == "201 Created" and chunks == [b"made"]
    # A server that gives up before iterating: the app never started a response.
    mw(environ_for("/things", "POST"), Server().start_response).close()  # type: ignore[attr-defined]
    events = recorded(telemetry, capture, 2)
    assert [triple(e) for e in events] == [("POST", "/things", 201), ("POST", "/things", 499)]
    assert events[0]["duration_ms"] >= 50


def test_exc_info_recall_passes_through_and_the_later_status_wins(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("half-way")
        except ValueError:
            info = sys.exc_info()
            start_response("503 Service Unavailable", [("Retry-After", "1")], info)
            app.info = info  # type: ignore[attr-defined]
        return [b"try later"]

    server = Server()
    body = WSGITelemetryMiddleware(app, telemetry=telemetry)(
        environ_for("/x"), server.start_response
    )
    assert list(body) == [b"try later"]
    body.close()  # type: ignore[attr-defined]
    assert server.calls[0] == ("200 OK", [("Content-Type", "text/plain")], None)
    assert server.calls[1][2] is app.info  # type: ignore[attr-defined]
    assert [triple(e) for e in recorded(telemetry, capture, 1)] == [("GET", "/x", 503)]


def test_close_is_forwarded_once_per_call_and_the_event_recorded_once(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    closes = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"a", b"b"])

        def close(self) -> None:
            closes.append(time.monotonic())

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Body()

    body = WSGITelemetryMiddleware(app, telemetry=telemetry)(
        environ_for("/x"), Server().start_response
    )
    assert not hasattr(body, "__len__")  # it does not pretend to know a length
    assert list(body) == [b"a", b"b"]
    time.sleep(0.05)  # the duration runs until close(), not until the last chunk
    body.close()  # type: ignore[attr-defined]
    assert len(closes) == 1
    body.close()  # type: ignore[attr-defined]
    events = recorded(telemetry, capture, 1)
    assert len(closes) == 2  # each server call reaches the app; still one event
    assert events[0]["duration_ms"] >= 50


def test_file_wrapper_responses_go_back_to_the_server_as_they_are(
    example: ModuleType, telemetry: Telemetry, capture: CaptureServer
) -> None:
    returned = []
    app = example.create_app(None)
    inner = app.wsgi_app

    def spy(environ: Environ, start_response: Any) -> Iterable[bytes]:
        result: Iterable[bytes] = inner(environ, start_response)
        returned.append(result)
        return result

    app.wsgi_app = WSGITelemetryMiddleware(spy, telemetry=telemetry, url_map=app.url_map)
    environ = environ_for("/download")
    environ["wsgi.file_wrapper"] = FileWrapper
    result = app(environ, Server().start_response)
    assert result is returned[0] and isinstance(result, FileWrapper)  # sendfile stays possible
    data = b"".join(result)
    assert data == (ROOT / "examples" / "flask_app" / "README.md").read_bytes()
    filelike = result.filelike
    assert not filelike.closed
    result.close()
    assert filelike.closed
    result.close()

    class Rigid:  # a wrapper that refuses new attributes: recorded when the app returns
        __slots__ = ("filelike",)

        def __init__(self, filelike: Any, blksize: int = 8192) -> None:
            self.filelike = filelike

        def __iter__(self) -> Iterator[bytes]:
            return iter([self.filelike.read()])

    environ = environ_for("/download")
    environ["wsgi.file_wrapper"] = Rigid
    result = app(environ, Server().start_response)
    assert isinstance(result, Rigid)
    result.filelike.close()
    events = recorded(telemetry, capture, 2)
    assert [triple(e) for e in events] == [("GET", "/download", 200)] * 2


def test_disabled_telemetry_is_a_pure_pass_through(
    home: Path, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIVO_TELEMETRY_DISABLED", "1")
    telemetry = Telemetry("visivo", "1.4.0", api_key="phc_test", host=capture.url)
    body = [b"as", b"is"]
    seen = []

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        seen.append(start_response)
        start_response("200 OK", [])
        return body

    server = Server()
    environ = environ_for("/x")
    before = dict(environ)
    assert WSGITelemetryMiddleware(app, telemetry=telemetry)(environ, server.start_response) is body
    assert seen == [server.start_response] and environ == before
    assert telemetry._emitter is None
    assert capture.requests == 0


def test_internal_failures_never_break_a_request(
    example: ModuleType,
    telemetry: Telemetry,
    capture: CaptureServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("telemetry bug")

    bare = example.create_app(None)
    ours = example.create_app(telemetry)
    monkeypatch.setattr(telemetry, "_record_request", broken)
    for path in ("/api/users/424242", "/nope/7", "/boom", "/stream?chunks=2&delay=0"):
        assert run_wsgi(ours, environ_for(path)) == run_wsgi(bare, environ_for(path))

    class BrokenMap:
        def bind_to_environ(self, environ: Environ) -> Any:
            raise RuntimeError("map bug")

        def iter_rules(self) -> Any:
            raise RuntimeError("map bug")

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"fine"]

    monkeypatch.undo()
    mw = WSGITelemetryMiddleware(app, telemetry=telemetry, url_map=BrokenMap())
    assert run_wsgi(mw, environ_for("/a/1"))[2] == [b"fine"]
    # The map failed, so no template; the event still goes out through the regex fallback.
    assert [e["endpoint"] for e in recorded(telemetry, capture, 1)] == ["/a/{id}"]


def test_concurrent_requests_keep_their_own_state(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    barrier = threading.Barrier(8)

    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        n = int(environ["PATH_INFO"].rsplit("/", 1)[1])
        barrier.wait(5)  # every request is in flight at once
        start_response(f"{200 + n} Custom", [])
        time.sleep(0.01 * n)
        yield b"x"

    mw = WSGITelemetryMiddleware(app, telemetry=telemetry)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: run_wsgi(mw, environ_for(f"/n/{n}")), range(8)))
    events = recorded(telemetry, capture, 8)
    assert sorted(e["status_code"] for e in events) == [200 + n for n in range(8)]
    for e in events:  # each request's own duration: longer sleeps, longer durations
        assert e["duration_ms"] >= 10 * (e["status_code"] - 200) - 1


def test_importing_the_middleware_imports_no_framework() -> None:
    code = (
        "import sys, telemetry_middleware.wsgi; "
        "print(sorted(m for m in ('flask', 'werkzeug', 'posthog') if m in sys.modules))"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


# -- real servers on loopback --


def test_streaming_is_not_buffered_under_a_real_server(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    release = threading.Event()
    produced = []
    app = Flask("streaming")

    @app.get("/live/<int:feed_id>")
    def live(feed_id: int) -> Response:
        def chunks() -> Iterator[bytes]:
            produced.append("first")
            yield b"first chunk\n"
            assert release.wait(10)
            produced.append("second")
            yield b"second chunk\n"

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    app.wsgi_app = WSGITelemetryMiddleware(app.wsgi_app, telemetry=telemetry)  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/live/7")
        response = conn.getresponse()
        first = response.read1(64)
        assert first == b"first chunk\n"
        assert produced == ["first"]  # the client has it while the generator still waits
        time.sleep(0.2)
        release.set()
        assert response.read() == b"second chunk\n"
        conn.close()
    finally:
        release.set()
        server.shutdown()
        thread.join(5)
    events = recorded(telemetry, capture, 1)
    assert triple(events[0]) == ("GET", "/live/{feed_id}", 200)
    assert events[0]["duration_ms"] >= 200  # the duration ran to the last chunk


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_until_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server did not start: {log.read_text()}")


def _serve(argv: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(port, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, the graceful stop: workers finish, flush their events and exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


LOAD = [f"/api/users/424242/orders/{UUID}", "/nope/jane@example.com", "/stream?chunks=3&delay=0.01"]


def _load(base: str, rounds: int) -> tuple[list[tuple[str, int]], set[int]]:
    """Concurrent requests (so both workers serve); returns (path, status) sent and the pids."""
    paths = ["/pid", "/download", *LOAD] * rounds
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: (p, *_get(base + p)), paths))
    pids = {json.loads(body)["pid"] for path, status, body in answers if path == "/pid"}
    return [(path, status) for path, status, _ in answers], pids


EXPECTED = {
    "/pid": ("/pid", 200),
    "/download": ("/download", 200),
    LOAD[0]: ("/api/users/{user_id}/orders/{order_id}", 200),
    LOAD[1]: ("/{value}/{email}", 404),
    LOAD[2]: ("/stream", 200),
}


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_deliver_every_event_once(
    preload: bool, home: Path, capture: CaptureServer, tmp_path: Path
) -> None:
    port = free_port()
    argv = [GUNICORN, "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10"]
    argv += ["--preload"] if preload else []
    env = subprocess_env(home, VISIVO_POSTHOG_HOST=capture.url)
    proc = _serve([*argv, "examples.flask_app.app:app"], port, env, tmp_path / "gunicorn.log")
    try:
        sent, pids = _load(f"http://127.0.0.1:{port}", rounds=8)
        for _ in range(5):  # the kernel chose one worker every time: ask again
            if len(pids) > 1:
                break
            more, more_pids = _load(f"http://127.0.0.1:{port}", rounds=4)
            sent += more
            pids |= more_pids
    finally:
        code = _stop(proc)
    assert code == 0, (tmp_path / "gunicorn.log").read_text()
    assert len(pids) == 2, pids  # both workers served
    assert all(status == EXPECTED[path][1] for path, status in sent)
    events = [e for e in api_events(capture, len(sent)) if e["properties"]["endpoint"] != "/health"]
    time.sleep(0.2)
    assert len(events) == len(sent), f"sent {len(sent)}, received {len(events)}"
    assert len({e["uuid"] for e in events}) == len(events)  # none duplicated
    got = sorted((e["properties"]["endpoint"], e["properties"]["status_code"]) for e in events)
    assert got == sorted(EXPECTED[path] for path, _ in sent)


@pytest.mark.slow
def test_werkzeug_dev_server_delivers_every_event(
    home: Path, capture: CaptureServer, tmp_path: Path
) -> None:
    port = free_port()
    env = subprocess_env(home, VISIVO_POSTHOG_HOST=capture.url, PORT=str(port))
    proc = _serve([PYTHON, "-m", "examples.flask_app.app"], port, env, tmp_path / "werkzeug.log")
    try:
        sent, pids = _load(f"http://127.0.0.1:{port}", rounds=3)
        # Its handler threads are daemons that close each response just after the client has
        # it; unlike gunicorn, the dev server does not wait for them when it exits.
        time.sleep(0.3)
    finally:
        code = _stop(proc)
    assert code == 0, (tmp_path / "werkzeug.log").read_text()
    assert len(pids) == 1
    events = [e for e in api_events(capture, len(sent)) if e["properties"]["endpoint"] != "/health"]
    assert len(events) == len(sent) and len({e["uuid"] for e in events}) == len(events)
    got = sorted((e["properties"]["endpoint"], e["properties"]["status_code"]) for e in events)
    assert got == sorted(EXPECTED[path] for path, _ in sent)
