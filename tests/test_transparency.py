"""Transparency: each example app behaves exactly the same with and without the middleware.

A differential test. The same corpus of requests (every route of the example: matched, 404, 405,
redirects, streaming, static files, the error endpoint, HEAD, OPTIONS, CORS) goes to two
instances of each example, one built without telemetry and one with it, and everything the
server side could observe is compared:

* ASGI: the app is called directly with a recording `send`, so the comparison is on the exact
  message sequence: status, every header in order, every body chunk with its `more_body` flag
  (the chunk boundaries), plus the exception that escaped (type and message) and which keys the
  app left in the scope. Both ways of installing the middleware are covered: FastAPI's
  `add_middleware` and wrapping the finished app.
* WSGI: the app is called with a recording `start_response`; the comparison is on every
  `start_response` call (status, header list, exc_info type), the iterable's chunks one by one,
  whether the iterable is still the server's `wsgi.file_wrapper` (sendfile), and the exception.

Then what a corpus cannot show: context variables set by an outer middleware reach the endpoint,
and context variables set inside the app reach the outer middleware after the call; background
tasks still run. Every instrumented request must also produce its event, so the comparison is
never against a middleware that silently switched itself off.

`tests/test_asgi.py` and `tests/test_wsgi.py` compare responses as an HTTP client sees them for a
few requests; this file compares at the protocol level, over every route.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import ROOT, shared_telemetry
from werkzeug.test import EnvironBuilder

from telemetry_middleware import ASGITelemetryMiddleware, Telemetry
from telemetry_middleware.capture_server import CaptureServer

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the examples package lives at the repository root

CHART = "9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"
RUNS = "/api/v1/projects/42/runs"
PREFLIGHT = [
    (b"origin", b"http://localhost:3000"),
    (b"access-control-request-method", b"GET"),
    (b"access-control-request-headers", b"x-custom"),
]
ORIGIN = [(b"origin", b"http://localhost:3000")]
JSON = [(b"content-type", b"application/json")]

# Set by an outer middleware and read by the endpoint; set by the endpoint (or a middleware
# inside ours) and read by the outer middleware once the app returned.
FROM_OUTSIDE: contextvars.ContextVar[str] = contextvars.ContextVar("from_outside", default="unset")
FROM_ENDPOINT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "from_endpoint", default="unset"
)
FROM_INNER: contextvars.ContextVar[str] = contextvars.ContextVar("from_inner", default="unset")


# -- shared set-up: one capture endpoint and one Telemetry for the module --


@dataclass
class Endpoint:
    telemetry: Telemetry
    capture: CaptureServer

    def api_events(self) -> int:
        assert self.telemetry.flush(5.0)
        return sum(1 for e in self.capture.events if e.get("event") == "api_request")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    home = tmp_path_factory.mktemp("transparency-home")
    with shared_telemetry(home) as (telemetry, capture):
        yield Endpoint(telemetry, capture)


@pytest.fixture
def counted(endpoint: Endpoint) -> Iterator[Callable[[int], None]]:
    """`counted(n)`: assert that the test's instrumented calls produced exactly n events."""
    before = endpoint.api_events()

    def check(expected: int) -> None:
        assert endpoint.api_events() - before == expected

    yield check


# -- ASGI: the FastAPI example --


@dataclass
class AsgiOutcome:
    messages: list[dict[str, Any]]
    error: tuple[type[BaseException], str] | None
    scope_keys: list[str]


def http_scope(
    method: str, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }


async def call_asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> AsgiOutcome:
    """One request, as a server makes it: the body once, then a client that stays connected."""
    messages: list[dict[str, Any]] = []
    delivered = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # cancelled by the app when it is done listening
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(copy.deepcopy(message))

    error = None
    try:
        await app(scope, receive, send)
    except Exception as exc:
        error = (type(exc), str(exc))
    return AsgiOutcome(messages, error, sorted(scope))


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""

    def __str__(self) -> str:
        return f"{self.method} {self.path}{'?' + self.query.decode() if self.query else ''}"


FASTAPI_CORPUS = [
    Req("GET", "/"),
    Req("GET", "/health"),
    Req("GET", "/api/v1/projects/42"),
    Req("GET", "/api/v1/projects/not-a-number"),  # 422 from the matched route
    Req("GET", f"/api/v1/projects/42/charts/{CHART}"),
    Req("GET", "/api/v1/projects/42/charts/not-a-uuid"),
    Req("GET", "/api/v1/projects/42/files/a/b/c.csv"),
    Req("POST", "/api/v1/projects/42/runs", headers=tuple(JSON), body=b'{"x": 1}'),
    Req("GET", "/api/v1/users/alice"),
    Req("GET", "/api/v1/users/alice", headers=tuple(ORIGIN)),  # CORS simple request
    Req("DELETE", "/api/v1/users/alice"),  # 405
    Req("HEAD", "/api/v1/users/alice"),  # 405: FastAPI routes do not add HEAD
    Req("OPTIONS", "/api/v1/users/alice"),  # 405 without CORS headers
    Req("OPTIONS", "/api/v1/users/alice", headers=tuple(PREFLIGHT)),  # CORS preflight
    Req("OPTIONS", "/api/v1/users/alice", headers=((b"origin", b"http://evil.test"),)),
    Req("GET", "/api/v1/events/wait"),
    Req("GET", "/api/v1/projects/42/"),  # slash redirect
    Req("GET", "/admin"),  # mount redirect
    Req("GET", "/admin/"),
    Req("GET", "/admin/jobs/7"),
    Req("GET", "/admin/jobs/seven"),
    Req("GET", "/admin/nope"),
    Req("GET", "/t/acme-corp/dashboard"),
    Req("GET", "/t/acme-corp/dashboards/9"),
    Req("GET", "/t/acme-corp/nope"),
    Req("GET", "/static/hello.txt"),
    Req("HEAD", "/static/hello.txt"),
    Req("GET", "/static/hello.txt", headers=((b"range", b"bytes=2-5"),)),
    Req("GET", "/static/missing.txt"),
    Req("POST", "/static/hello.txt"),  # 405 from StaticFiles
    Req("GET", "/stream"),
    Req("GET", "/boom"),
    Req("GET", "/nope/jane@example.com", query=b"token=abc"),
    Req("GET", "/openapi.json"),
    Req("GET", "/docs"),
    Req("BREW", "/"),  # a method no route knows
]


def _fastapi_module(patch: pytest.MonkeyPatch) -> ModuleType:
    import examples.fastapi_app.app as module

    # The same code paths, minus the waiting: 5 s long poll, 0.1 s between chunks, 0.3 s task.
    patch.setattr(module, "LONG_POLL_SECONDS", 0.05)
    patch.setattr(module, "STREAM_DELAY", 0.001)
    patch.setattr(module, "BACKGROUND_SECONDS", 0.0)
    return module


def _add_context_route(app: Any) -> None:
    """`/ctx`: reads what the outer middleware set, and sets a variable of its own."""

    async def ctx() -> dict[str, str]:
        FROM_ENDPOINT.set("set-by-endpoint")
        return {"outside": FROM_OUTSIDE.get()}

    app.add_api_route("/ctx", ctx)


class _InnerMiddleware:
    """A plain ASGI middleware added before ours, so it runs inside it; sets a variable."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            FROM_INNER.set("set-by-inner-middleware")
        await self.app(scope, receive, send)


def _fastapi_pair(module: ModuleType, telemetry: Telemetry, form: str) -> tuple[Any, Any]:
    """(without, with) the middleware, built the same way apart from that."""
    from starlette.middleware import Middleware

    bare = module.create_app(None)
    ours = module.create_app(telemetry if form == "add_middleware" else None)
    for app in (bare, ours):
        _add_context_route(app)
        # `add_middleware` puts the newest first (outermost); the end of the list is innermost.
        app.user_middleware.append(Middleware(_InnerMiddleware))
    if form == "wrapped":
        return bare, ASGITelemetryMiddleware(ours, telemetry=telemetry)
    return bare, ours


@pytest.fixture(scope="module", params=["add_middleware", "wrapped"])
def fastapi_apps(request: pytest.FixtureRequest, endpoint: Endpoint) -> Iterator[tuple[Any, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        module = _fastapi_module(patch)
        yield _fastapi_pair(module, endpoint.telemetry, request.param)


@pytest.mark.parametrize("req", FASTAPI_CORPUS, ids=str)
def test_fastapi_example_is_identical_at_the_protocol_level(
    fastapi_apps: tuple[Any, Any], req: Req, counted: Callable[[int], None]
) -> None:
    bare, ours = fastapi_apps

    async def both() -> tuple[AsgiOutcome, AsgiOutcome]:
        outcomes = []
        for app in (bare, ours):
            scope = http_scope(req.method, req.path, req.query, list(req.headers))
            outcomes.append(await call_asgi(app, scope, req.body))
        return outcomes[0], outcomes[1]

    without, with_ = asyncio.run(both())
    assert with_.messages == without.messages  # status, headers in order, each chunk and flag
    assert with_.error == without.error
    assert with_.scope_keys == without.scope_keys
    assert without.messages, "the request got no response at all"
    if req.path == "/stream":
        bodies = [m for m in without.messages if m["type"] == "http.response.body"]
        assert len(bodies) > 2  # several chunks: the boundaries were really compared
    if req.path == "/boom":
        assert without.error is not None and without.error[0] is RuntimeError
    counted(1)


def test_fastapi_context_variables_and_background_tasks(
    endpoint: Endpoint, counted: Callable[[int], None]
) -> None:
    """Outer middleware -> endpoint, endpoint and inner middleware -> outer middleware, and
    background tasks, the same with and without the middleware, in both installations."""
    results: dict[str, list[Any]] = {}
    instrumented = 0
    with pytest.MonkeyPatch.context() as patch:
        module = _fastapi_module(patch)
        for form in ("add_middleware", "wrapped"):
            pair = _fastapi_pair(module, endpoint.telemetry, form)
            for label, app in zip(("without", "with"), pair, strict=True):
                results[f"{form}/{label}"] = asyncio.run(_context_round(app, module))
            instrumented += 2
    expected = [
        b'{"outside":"set-by-outer-middleware"}',
        "set-by-endpoint",
        "set-by-inner-middleware",
        [42],
    ]
    for key, observed in results.items():
        assert observed == expected, key
    counted(instrumented)


async def _context_round(app: Any, module: ModuleType) -> list[Any]:
    """Run `/ctx` and a background-task request through an outer middleware; report."""
    seen_after: dict[str, tuple[str, str]] = {}

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        token = FROM_OUTSIDE.set("set-by-outer-middleware")
        try:
            await app(scope, receive, send)
            seen_after[scope["path"]] = (FROM_ENDPOINT.get(), FROM_INNER.get())
        finally:
            FROM_OUTSIDE.reset(token)

    # Each request in a task of its own, with a copy of the context, as a server runs it.
    ctx = await asyncio.create_task(call_asgi(outer, http_scope("GET", "/ctx")))
    body = b"".join(m.get("body", b"") for m in ctx.messages)
    done_before = len(module.runs_done)
    run = await asyncio.create_task(call_asgi(outer, http_scope("POST", RUNS)))
    assert run.messages[0]["status"] == 202
    return [body, *seen_after["/ctx"], module.runs_done[done_before:]]


# -- WSGI: the Flask example --


class FileWrapper:
    """A server's `wsgi.file_wrapper` (like gunicorn's): it uses sendfile when it gets one back."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.filelike.read(self.blksize):
            yield chunk

    def close(self) -> None:
        self.filelike.close()


@dataclass
class WsgiOutcome:
    calls: list[tuple[str, list[tuple[str, str]], type[BaseException] | None]]
    chunks: list[bytes]
    file_wrapper: bool
    error: tuple[type[BaseException], str] | None


def call_wsgi(app: Any, req: Req) -> WsgiOutcome:
    """One request as a PEP 3333 server makes it: call, iterate chunk by chunk, close."""
    environ = EnvironBuilder(
        path=req.path,
        method=req.method,
        query_string=req.query.decode(),
        headers=[(k.decode(), v.decode()) for k, v in req.headers],
        data=req.body,
    ).get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    calls: list[tuple[str, list[tuple[str, str]], type[BaseException] | None]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        calls.append((status, list(headers), exc_info[0] if exc_info else None))
        return lambda data: None

    chunks: list[bytes] = []
    wrapper = False
    error = None
    try:
        result: Iterable[bytes] = app(environ, start_response)
        wrapper = isinstance(result, FileWrapper)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        error = (type(exc), str(exc))
    return WsgiOutcome(calls, chunks, wrapper, error)


FLASK_CORPUS = [
    Req("GET", "/"),
    Req("GET", "/health"),
    Req("GET", "/pid"),
    Req("GET", "/api/users/424242"),
    Req("GET", "/api/users/1"),  # a matched rule that aborts with 404
    Req("GET", "/api/users/alice"),  # no rule: the converter refuses
    Req(
        "PUT",
        "/api/users/424242",
        headers=((b"content-type", b"application/json"),),
        body=b'{"name": "Jane"}',
    ),
    Req("GET", f"/api/users/424242/orders/{CHART}"),
    Req("GET", "/api/users/by-name/jane"),
    Req(
        "POST",
        "/api/projects",
        headers=((b"content-type", b"application/json"),),
        body=b'{"name": "p"}',
    ),
    Req("GET", f"/api/projects/{CHART}/files/a/b/c.csv"),
    Req("DELETE", "/api/users/424242"),  # 405
    Req("HEAD", "/api/users/424242"),
    Req("HEAD", "/download"),
    Req("OPTIONS", "/api/users/424242"),
    Req("OPTIONS", "/nope"),
    Req("GET", "/docs"),  # 308 to /docs/
    Req("GET", "/docs/"),
    Req("GET", "/stream", query=b"chunks=4&delay=0"),
    Req("GET", "/download"),  # the file wrapper goes back to the server
    Req("GET", "/boom"),
    Req("GET", "/nope/jane@example.com", query=b"token=abc"),
    Req("BREW", "/"),
]


@pytest.fixture(scope="module", params=["handled", "propagated"])
def flask_apps(request: pytest.FixtureRequest, endpoint: Endpoint) -> Iterator[tuple[Any, Any]]:
    """(without, with) the middleware; `propagated`: exceptions leave the app (debug-like)."""
    import examples.flask_app.app as module

    with pytest.MonkeyPatch.context() as patch:
        # POST /api/projects answers a fresh uuid4: the same one each call, for a comparison.
        fixed = uuid.UUID(CHART)
        patch.setattr(module, "uuid", SimpleNamespace(uuid4=lambda: fixed, UUID=uuid.UUID))
        apps = (module.create_app(None), module.create_app(endpoint.telemetry))
        for app in apps:
            app.config["PROPAGATE_EXCEPTIONS"] = request.param == "propagated"
            _add_flask_context_route(app)
        yield apps


def _add_flask_context_route(app: Any) -> None:
    def ctx() -> dict[str, str]:
        FROM_ENDPOINT.set("set-by-endpoint")
        return {"outside": FROM_OUTSIDE.get()}

    app.add_url_rule("/ctx", "ctx", ctx)


@pytest.mark.parametrize("req", FLASK_CORPUS, ids=str)
def test_flask_example_is_identical_at_the_protocol_level(
    flask_apps: tuple[Any, Any], req: Req, counted: Callable[[int], None]
) -> None:
    bare, ours = flask_apps
    without, with_ = call_wsgi(bare, req), call_wsgi(ours, req)
    assert with_.calls == without.calls  # status, headers in order, exc_info
    assert with_.chunks == without.chunks  # every chunk, so every boundary
    assert with_.file_wrapper == without.file_wrapper
    assert with_.error == without.error
    if req.path == "/stream":
        assert len(without.chunks) == 4
    if req.path == "/download" and req.method == "GET":
        assert without.file_wrapper  # so the check above compared the sendfile path
    if req.path == "/boom":
        propagated = bare.config["PROPAGATE_EXCEPTIONS"]
        assert (without.error is not None) == propagated
    counted(1)


def test_flask_context_variables(
    flask_apps: tuple[Any, Any], counted: Callable[[int], None]
) -> None:
    observed = []
    for app in flask_apps:
        seen: dict[str, str] = {}

        def outer(environ: Any, start_response: Any, app: Any = app, seen: Any = seen) -> Any:
            token = FROM_OUTSIDE.set("set-by-outer-middleware")
            try:
                result = app(environ, start_response)
                seen["endpoint"] = FROM_ENDPOINT.get()
                return result
            finally:
                FROM_OUTSIDE.reset(token)

        outcome = contextvars.copy_context().run(call_wsgi, outer, Req("GET", "/ctx"))
        observed.append((outcome.calls[0][0], outcome.chunks, seen))
    assert observed[0] == observed[1]
    assert observed[0][1] == [b'{"outside":"set-by-outer-middleware"}\n']
    assert observed[0][2] == {"endpoint": "set-by-endpoint"}
    counted(1)
