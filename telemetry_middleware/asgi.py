"""`ASGITelemetryMiddleware`: one `api_request` event per HTTP request of any ASGI app.

The request path stays tiny: two clock reads, a status and end time caught in a
`send` wrapper, a dictionary lookup for the route template and a tuple handed to
the emitter. Normalising the endpoint, building the event and sending it happen on
the telemetry worker thread.

Route templates come from what the router leaves in the scope after dispatch.
Starlette and FastAPI routers update the scope dict in place, so once the app
returns, `scope["endpoint"]` names the innermost thing that matched: a route's
endpoint, or the app of a `Mount`/`Host` whose own router then found nothing.
The template of that endpoint (with every `Mount` prefix and FastAPI
`include_router` prefix above it) is worked out once, by walking the wrapped
app's route tree into a `_RouteIndex`, and looked up per request by identity.
Nothing here imports Starlette or FastAPI: the tree is read by duck typing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = ["ASGITelemetryMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_CLOSED = 499
SERVER_ERROR = 500

# Bounds on the route tree walk: an app's tree is finite, but a cyclic or
# generated one must not turn the first request into a long stall.
_MAX_DEPTH = 32
_MAX_NODES = 100_000
# Endpoints seen in a scope but absent from the tree (routes added in odd ways):
# remembered so they do not trigger a rebuild on every request, and bounded.
_MAX_MISSES = 1024
# A miss rebuilds the index at most this often (routes added after startup).
_REBUILD_INTERVAL = 1.0
# How far down `.app` attributes to look for the object holding `.routes`.
_MAX_APP_CHAIN = 16

# Exceptions that mean the peer went away rather than that the app failed.
_DISCONNECT_NAMES = frozenset({"ClientDisconnect", "ClientDisconnected", "Disconnected"})

_PARAM_RE = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*([A-Za-z_][A-Za-z0-9_]*))?[^{}]*\}")

_perf_counter = time.perf_counter
_monotonic = time.monotonic


class _Leaf:
    """One routable thing: a route (or a mounted app with no routes) and its full template."""

    __slots__ = ("_regex", "endpoint", "route", "template")

    def __init__(self, route: object, endpoint: object, template: str) -> None:
        self.route = route
        self.endpoint = endpoint
        self.template = template
        self._regex: re.Pattern[str] | None = None

    def matches(self, route_path: str) -> bool:
        """Whether this template could have produced `route_path` (only for ambiguous endpoints)."""
        regex = self._regex
        if regex is None:
            regex = self._regex = _template_regex(self.template)
        return regex.fullmatch(route_path) is not None


def _template_regex(template: str) -> re.Pattern[str]:
    """A permissive matcher for a template: `{x:path}` spans slashes, other parameters do not."""
    out: list[str] = []
    pos = 0
    for m in _PARAM_RE.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(".*" if m.group(2) == "path" else "[^/]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


# What the index knows about an endpoint: (the endpoint itself, its template when
# exactly one leaf has it, every leaf that has it). A container (a mounted router
# or sub-application) has no leaves: reaching it means its own router found nothing.
_Entry = tuple[object, "str | None", "tuple[_Leaf, ...]"]


class _RouteIndex:
    """Every endpoint of one app's route tree, with the full template of each.

    `unique` is the per-request fast path: endpoints that only one template can
    produce (nearly all of them). Each value holds its endpoint, so an `id()` used
    as a key cannot be reused by another object while the index lives.
    """

    __slots__ = ("by_endpoint", "static_segments", "unique")

    def __init__(self, by_endpoint: dict[int, _Entry], static_segments: frozenset[str]) -> None:
        self.by_endpoint = by_endpoint
        self.static_segments = static_segments
        self.unique: dict[int, tuple[object, str]] = {
            key: (entry[0], entry[1]) for key, entry in by_endpoint.items() if entry[1] is not None
        }

    @classmethod
    def build(cls, owner: object) -> _RouteIndex:
        """Walk the tree under `owner` (an object with `.routes`); runs once, not per request."""
        from .paths import static_segments_of

        walker = _Walker()
        walker.walk(getattr(owner, "routes", None) or (), "")
        by_endpoint: dict[int, _Entry] = {}
        templates: list[str] = []
        for key, found in walker.leaves.items():
            endpoint = found[0].endpoint
            distinct = {leaf.template for leaf in found}
            unique = found[0].template if len(distinct) == 1 else None
            by_endpoint[key] = (endpoint, unique, tuple(found))
            templates.extend(distinct)
        for key, app in walker.containers.items():
            by_endpoint.setdefault(key, (app, None, ()))
        return cls(by_endpoint, static_segments_of(templates))


def _routes_owner(app: object) -> object | None:
    """The first object at or under `app` (through middleware `.app` attributes) with `.routes`.

    For `app.add_middleware(...)` that is the router under Starlette's own middleware; for a
    wrapped app, the Starlette/FastAPI app itself; for a mounted app, its router, if any.
    """
    obj: object | None = app
    for _ in range(_MAX_APP_CHAIN):
        if obj is None:
            return None
        if isinstance(getattr(obj, "routes", None), (list, tuple)):
            return obj
        obj = getattr(obj, "app", None)
    return None


def _routes_of(app: object) -> list[Any] | None:
    owner = _routes_owner(app)
    return None if owner is None else list(getattr(owner, "routes", ()))


class _Walker:
    """Collects the leaves of one route tree; bounded in depth and in nodes visited."""

    __slots__ = ("containers", "leaves", "visited")

    def __init__(self) -> None:
        self.leaves: dict[int, list[_Leaf]] = {}
        self.containers: dict[int, object] = {}
        self.visited = 0

    def walk(self, routes: Iterable[Any], prefix: str, depth: int = 0) -> None:
        """Record every leaf under `routes` with `prefix` (mount and include prefixes) prepended.

        Recognises, by shape: routes (`.path` and `.endpoint`), `Mount`s (`.path` and
        `.app`), `Host`s (`.host` and `.app`) and FastAPI's lazily included routers
        (`.original_router` and `.include_context.prefix`). Anything else is skipped:
        its requests fall back to the normalised raw path. The same sub-app mounted
        twice is walked twice, once under each prefix.
        """
        if depth > _MAX_DEPTH:
            return
        for route in list(routes):
            self.visited += 1
            if self.visited > _MAX_NODES:
                return
            try:
                self._visit(route, prefix, depth)
            except Exception:
                continue

    def _visit(self, route: Any, prefix: str, depth: int) -> None:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            extra = getattr(context, "prefix", "") or ""
            self.walk(getattr(included, "routes", None) or (), prefix + str(extra), depth + 1)
            return
        path = getattr(route, "path", None)
        if isinstance(path, str) and hasattr(route, "endpoint"):
            self._add(route, route.endpoint, prefix + path)
            return
        app = getattr(route, "app", None)
        if app is None:
            return
        if isinstance(getattr(route, "host", None), str):
            child_prefix = prefix  # a Host's pattern is a hostname, never part of the endpoint
        elif isinstance(path, str):
            child_prefix = prefix + path
        else:
            return
        sub_routes = _routes_of(app)
        if sub_routes is None:
            # A mounted app without a router of its own (StaticFiles, a WSGI app):
            # everything under it is one endpoint, like `/static/{path}`.
            self._add(route, app, child_prefix + "/{path:path}")
            return
        self.containers[id(app)] = app
        self.walk(sub_routes, child_prefix, depth + 1)

    def _add(self, route: object, endpoint: object, template: str) -> None:
        if self.visited <= _MAX_NODES:
            self.leaves.setdefault(id(endpoint), []).append(_Leaf(route, endpoint, template))


def _is_disconnect(exc: BaseException) -> bool:
    """An exception that says the client went away (not an application failure)."""
    if isinstance(exc, (ConnectionError, asyncio.CancelledError)):
        return True
    return any(cls.__name__ in _DISCONNECT_NAMES for cls in type(exc).__mro__)


def _route_path(scope: Scope, entry_root: object) -> str:
    """The request path below the deployment's `root_path`: what the app's routes describe.

    Starlette >= 0.33 keeps the full path in `scope["path"]` and grows `root_path`
    at each Mount; older versions cut the mounted prefix off `path` instead, which
    `root_path + path` undoes.
    """
    path = scope.get("path")
    if not isinstance(path, str):
        return "/"
    root = scope.get("root_path")
    if isinstance(root, str) and root != entry_root and not path.startswith(root):
        path = root + path
    if isinstance(entry_root, str) and entry_root and path.startswith(entry_root):
        rest = path[len(entry_root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


class ASGITelemetryMiddleware:
    """Records method, route template, status and duration of each HTTP request.

    Use as `app.add_middleware(ASGITelemetryMiddleware, telemetry=t)` or wrap any
    ASGI app: `ASGITelemetryMiddleware(app, telemetry=t)`. Messages pass through
    unchanged and at once; per-request state lives in local closures, so one
    instance serves concurrent requests. WebSocket and lifespan scopes, and every
    scope when telemetry is off, go straight to the app.
    """

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry
        self._enabled = bool(telemetry.enabled)
        self._record = telemetry._record_request
        # Route knowledge shared by all requests (never per-request state):
        self._owner: object | None = None  # the object under `app` that holds `.routes`
        self._owner_known = False
        self._index: _RouteIndex | None = None
        self._unique: dict[int, tuple[object, str]] = {}  # the index's fast map
        self._built_at = -_REBUILD_INTERVAL
        self._misses: dict[int, object] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._enabled:
            await self.app(scope, receive, send)
            return

        start = _perf_counter()
        # Mounts below grow `root_path`; the deployment's own prefix is what it is now.
        entry_root = scope.get("root_path", "")
        status = 0
        end = 0.0
        gone = False  # the client disconnected before the response started

        async def receive_and_watch() -> Message:
            nonlocal gone
            message = await receive()
            try:
                if message["type"] == "http.disconnect" and not status:
                    gone = True
            except Exception:
                pass
            return message

        async def send_and_watch(message: Message) -> None:
            nonlocal status, end
            try:
                kind = message["type"]
                if kind == "http.response.body":
                    if not message.get("more_body"):
                        end = _perf_counter()
                elif kind == "http.response.start":
                    status = message["status"]
                elif kind == "http.response.pathsend":
                    end = _perf_counter()
            except Exception:
                pass
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_watch)
        except BaseException as exc:
            try:
                if isinstance(exc, (Exception, asyncio.CancelledError)):
                    if gone:
                        code = CLIENT_CLOSED
                    elif end:
                        code = status  # the response was complete; a background task failed
                    elif _is_disconnect(exc):
                        code = CLIENT_CLOSED
                    else:
                        code = SERVER_ERROR  # before the response, or cut off mid-body
                    end = end or _perf_counter()
                    self._finish(scope, code, (end - start) * 1000.0, entry_root)
            except Exception:
                pass
            raise
        try:
            if gone:
                # Whatever the app sent after the client left went nowhere.
                code = CLIENT_CLOSED
            elif end:
                # The common case, inline: a complete response from an indexed endpoint.
                endpoint = scope.get("endpoint")
                hit = self._unique.get(id(endpoint))
                if hit is not None and hit[0] is endpoint:
                    self._record(scope["method"], status, (end - start) * 1000.0, hit[1])
                    return
                code = status
            else:
                # Returned mid-body (the started status is all there is), or without a
                # response at all (the server answers 500 itself).
                code = status or SERVER_ERROR
            end = end or _perf_counter()
            self._finish(scope, code, (end - start) * 1000.0, entry_root)
        except Exception:
            pass

    def _finish(
        self,
        scope: Scope,
        status: int,
        duration_ms: float,
        entry_root: object,
    ) -> None:
        """Queue the record: with a template when one is found, else with the raw path."""
        template = self._template(scope, entry_root)
        method = scope.get("method", "")
        if template is not None:
            self._record(method, status, duration_ms, template)
            return
        index = self._index if self._owner_known else self._ensure_index()
        static = index.static_segments if index is not None else None
        self._record(method, status, duration_ms, None, _route_path(scope, entry_root), static)

    # -- the slow paths: once per app, or per unusual request --

    def _template(self, scope: Scope, entry_root: object) -> str | None:
        """The full route template for what the router matched, or None (404, redirect...).

        An endpoint left in the scope by a router above us (we are mounted inside another
        app, and nothing below us matched) is not in our index, so it ends as a miss.
        """
        endpoint = scope.get("endpoint")
        if endpoint is None or endpoint is self:
            return None
        index = self._index
        hit = index.by_endpoint.get(id(endpoint)) if index is not None else None
        if hit is None or hit[0] is not endpoint:
            return self._resolve_miss(scope, endpoint, entry_root)
        if hit[1] is None and hit[2]:
            return self._disambiguate(scope, hit[2], entry_root)
        return hit[1]  # None for a mounted router or sub-app whose own router found nothing

    def _ensure_index(self) -> _RouteIndex | None:
        """Find the wrapped app's route table and index it (first request only)."""
        if not self._owner_known:
            self._owner = _routes_owner(self.app)
            self._owner_known = True
        if self._index is None and self._owner is not None:
            self._rebuild()
        return self._index

    def _rebuild(self) -> None:
        """Walk the route tree again; the new index replaces the old one in one assignment."""
        owner = self._owner
        if owner is None:
            return
        self._built_at = _monotonic()
        index = _RouteIndex.build(owner)
        self._index = index
        self._unique = index.unique

    def _resolve_miss(self, scope: Scope, endpoint: object, entry_root: object) -> str | None:
        """An endpoint the index does not know: index (again) once, else trust the leaf route."""
        misses = self._misses
        key = id(endpoint)
        if misses.get(key) is not endpoint:
            first = not self._owner_known or self._index is None
            self._ensure_index()
            if not first and _monotonic() - self._built_at >= _REBUILD_INTERVAL:
                self._rebuild()  # routes may have been added since the last walk
            index = self._index
            hit = index.by_endpoint.get(key) if index is not None else None
            if hit is not None and hit[0] is endpoint:
                if hit[1] is None and hit[2]:
                    return self._disambiguate(scope, hit[2], entry_root)
                return hit[1]
            if len(misses) >= _MAX_MISSES:
                misses.clear()
            misses[key] = endpoint
        # Not in the tree: the route that matched still names its own template, which is
        # complete when no Mount was crossed (the root path did not grow on the way down).
        route = scope.get("route")
        if route is None or getattr(route, "endpoint", None) is not endpoint:
            return None
        if scope.get("root_path", "") != entry_root:
            return None
        context = _fastapi_route_context(scope, route)
        path = getattr(context if context is not None else route, "path", None)
        return path if isinstance(path, str) else None

    def _disambiguate(
        self, scope: Scope, leaves: tuple[_Leaf, ...], entry_root: object
    ) -> str | None:
        """One endpoint, several routes: the matched route, else the first template that fits."""
        route = scope.get("route")
        candidates = [leaf for leaf in leaves if leaf.route is route] or list(leaves)
        if len({leaf.template for leaf in candidates}) == 1:
            return candidates[0].template
        route_path = _route_path(scope, entry_root)
        for leaf in candidates:
            if leaf.matches(route_path):
                return leaf.template
        return None


def _fastapi_route_context(scope: Scope, route: object) -> object | None:
    """FastAPI keeps the include_router-prefixed route in `scope["fastapi"]`; find it if there."""
    state = scope.get("fastapi")
    if not isinstance(state, dict):
        return None
    context: object | None = state.get("effective_route_context")
    if context is not None and getattr(context, "original_route", None) is route:
        return context
    return None
