"""WSGI middleware: one `api_request` event per request, for Flask, Werkzeug or any WSGI app.

    flask_app.wsgi_app = WSGITelemetryMiddleware(flask_app.wsgi_app, telemetry=telemetry)

The request path only reads the clock, wraps `start_response` to note the status, and hands the
server a thin iterable whose `close()` reads the clock again and queues one tuple. Turning the
template or raw path into an endpoint happens later, on the telemetry worker thread.

Where the template comes from, cheapest first:

* Flask. Flask matches the URL itself and keeps the `Rule` on its request object, but it clears
  `environ["werkzeug.request"]` when it pops the request context, before the server has read
  the body, so the request object cannot be found from the environ afterwards. Just before
  popping, Flask hands its contexts to the callable in `environ["werkzeug.debug.preserve_context"]`
  (a documented Werkzeug protocol, used by its debugger and by Flask's test client). Whenever
  Flask is loaded, the middleware puts a fresh list's `append` there (chaining to a callable
  already present), reads `request.url_rule.rule` as soon as the app returns, then empties the
  list, so Flask's contexts are freed before the body is sent and no reference cycle outlives
  the request. Cost: one list and one dict entry, no Python call, no matching, nothing
  registered on the app; and it finds a Flask app behind other middleware too. A 405
  re-matches once with an allowed method through the context's own URL adapter, so the event
  keeps the route's template (405s only).
* Any other framework may put the matched rule string in `environ[RULE_KEY]` (None: no match).
* A plain Werkzeug app: its `Map` (passed as `url_map=`, or found as `url_map` on the wrapped
  object or on the owner of a bound `wsgi_app` method) is matched once, at the end of the
  request, only when no framework reported a rule.
* Otherwise no template: the raw `PATH_INFO` goes to the regex fallback, with the static
  segments of the app's rules when a `Map` is known (computed once per map, cached).

`SCRIPT_NAME` is never part of the endpoint: only `PATH_INFO`, read at entry before the app can
rewrite it, is used, and Werkzeug rules never include the mount point.

The response iterable: the server gets a wrapper that forwards iteration and `close()` and
records the event when `close()` has returned: PEP 3333 requires servers to call it, so streamed
bodies are timed to their end, and a second `close()` records nothing more. It has no `__len__`:
it cannot know a length. A server that never calls `close()` breaks PEP 3333 and gets no event
for that request (a `__del__` fallback would cost every request more than it could save; with
Werkzeug's test client, close the response or pass `buffered=True`).

`wsgi.file_wrapper`: when the app returns an instance of the server's file wrapper, that very
object goes back to the server, because servers such as gunicorn test
`isinstance(result, environ["wsgi.file_wrapper"])` before using `sendfile()`; wrapping it would
silently turn zero-copy sends into Python reads. The middleware sets its own `close` on that
instance (calling the original first), the instance-attribute trick the PEP 3333 sample
`FileWrapper` itself uses. An object that refuses the attribute is recorded when the app returns
(the transfer is then not timed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .paths import static_segments_of

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .telemetry import Telemetry

__all__ = ["RULE_KEY", "WSGITelemetryMiddleware"]

#: A framework may leave the matched rule string here (None: routing found no rule).
RULE_KEY = "telemetry_middleware.rule"
#: Werkzeug's environ protocol through which Flask hands over its contexts before popping them.
PRESERVE_CONTEXT_KEY = "werkzeug.debug.preserve_context"

_SERVER_ERROR = 500
# The server closed the response before the app started one: the client went away.
_CLIENT_GONE = 499

_MISSING: Any = object()

Headers = list[tuple[str, str]]


class WSGITelemetryMiddleware:
    """Wrap a WSGI app so each request queues one `api_request` event; nothing else changes.

    Per-request state lives on an `_Exchange` created for that request, never on the
    middleware, so one instance serves any number of threads.
    """

    def __init__(self, app: WSGIApplication, telemetry: Telemetry, url_map: Any = None) -> None:
        self.app = app
        self.telemetry = telemetry
        # Settings are resolved once, when `Telemetry` is built: off stays off.
        self._enabled = bool(telemetry.enabled)
        # Offer Flask the context hand-over whenever Flask is loaded, so a Flask app is found
        # behind other middleware too (ProxyFix, DispatcherMiddleware...).
        self.flask = "flask" in sys.modules
        self.url_map: Any = url_map if url_map is not None else _discover_map(app)
        # id(map) -> (map, rule count, static segments): computed once per routing table.
        self._static: dict[int, tuple[Any, int, frozenset[str]]] = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self._enabled:
            return self.app(environ, start_response)
        try:
            exchange = _Exchange(self, environ, start_response)
        except Exception:
            return self.app(environ, start_response)
        try:
            body = self.app(environ, exchange.start_response)
        except BaseException:
            exchange.failed = True
            exchange.finish()
            raise
        if exchange.contexts:
            exchange.take_rule()
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and _is_instance(body, file_wrapper):
            exchange.watch_file(body)
            return body
        exchange.body = body
        return exchange

    # -- the end of a request without a Flask rule: never raises --

    def _record_unmatched(
        self,
        exchange: _Exchange,
        environ: WSGIEnvironment,
        status: int,
        end: float,
    ) -> None:
        """Match a known `Map` if no framework reported a rule; else send the raw path."""
        template = exchange.template
        url_map = exchange.url_map
        if url_map is None:
            url_map = self.url_map
        if template is _MISSING:
            template = environ.get(RULE_KEY, _MISSING)
        if template is _MISSING:
            template = None
            if url_map is not None:
                template = _match_map(url_map, environ, exchange.method, exchange.path)
        static = self._static_segments(url_map) if template is None else None
        self.telemetry._record_request(
            exchange.method,
            status,
            (end - exchange.start) * 1000.0,
            template,
            exchange.path,
            static,
        )

    def _static_segments(self, url_map: Any) -> frozenset[str] | None:
        """The literal segments of every rule, recomputed only when rules were added."""
        if url_map is None:
            return None
        rules = getattr(url_map, "_rules", None)
        count = len(rules) if isinstance(rules, list) else -1
        cached = self._static.get(id(url_map))
        if cached is not None and cached[0] is url_map and cached[1] == count:
            return cached[2]
        try:
            segments = static_segments_of(str(rule.rule) for rule in url_map.iter_rules())
        except Exception:
            return None
        self._static[id(url_map)] = (url_map, count, segments)
        return segments


class _Exchange:
    """One request's state; also the iterable handed back to the server.

    Defaults live on the class, so a request stores only what differs from them.
    """

    status = ""  # the status line as the app gave it, parsed only at the end
    failed = False
    body: Iterable[bytes] = ()
    contexts: list[Any] | None = None  # what Flask handed over before popping its contexts
    template: Any = _MISSING  # Flask's rule string, None when Flask matched none
    url_map: Any = None  # the Flask app's map, only when Flask matched no rule

    def __init__(
        self,
        middleware: WSGITelemetryMiddleware,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> None:
        self.start = perf_counter()
        self.middleware = middleware
        self.server_start_response = start_response
        self.environ: WSGIEnvironment | None = environ
        self.method: str = environ.get("REQUEST_METHOD") or ""
        self.path: str = environ.get("PATH_INFO") or "/"
        if middleware.flask:
            contexts: list[Any] = []
            self.contexts = contexts
            previous = environ.get(PRESERVE_CONTEXT_KEY)
            environ[PRESERVE_CONTEXT_KEY] = (
                contexts.append if previous is None else _chain(previous, contexts)
            )

    def start_response(
        self, status: str, headers: Headers, exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        """Note the status (a later `exc_info` call replaces it) and pass the call through."""
        self.status = status
        if exc_info is None:
            return self.server_start_response(status, headers)
        return self.server_start_response(status, headers, exc_info)

    def take_rule(self) -> None:
        """Read the template from Flask's contexts, then let go of them.

        Called as soon as the app returns: the contexts (request, session, `g`) are freed
        before the body is sent instead of living on until `close()`.
        """
        contexts = self.contexts or []
        try:
            try:
                # Flask hands over the app context, then the request context.
                self.template = contexts[-1].request.url_rule.rule
            except Exception:  # no rule matched (or another Flask layout)
                self.template, self.url_map = _flask_unmatched(contexts)
        finally:
            contexts.clear()  # the request context references the environ: no cycle left

    def watch_file(self, body: Any) -> None:
        """Keep the server's `sendfile` path: time the transfer through the object's own close."""
        inner_close = getattr(body, "close", None)
        exchange = self

        def close() -> None:
            try:
                if inner_close is not None:
                    inner_close()
            finally:
                exchange.finish()

        try:
            body.close = close
        except Exception:
            self.finish()  # cannot watch it: time up to the app's return instead

    # -- the iterable protocol, forwarded --

    def __iter__(self) -> Iterator[bytes]:
        # A generator: resuming it per chunk costs less than a `__next__` method call. It never
        # closes the app's iterable itself (hence no `yield from`): only the server's `close()`
        # reaches it, never a garbage-collected generator.
        try:
            for chunk in self.body:  # noqa: UP028
                yield chunk
        except GeneratorExit:
            raise
        except BaseException:
            self.failed = True
            raise

    def close(self) -> None:
        """Forward `close()` to the app's iterable, then record the event (once)."""
        try:
            inner_close = getattr(self.body, "close", None)
            if inner_close is not None:
                inner_close()
        finally:
            self.finish()

    def finish(self) -> None:
        """Queue the event exactly once; an internal failure means no event, never an error."""
        end = perf_counter()
        environ = self.environ
        if environ is None:
            return
        self.environ = None
        try:
            if self.failed:
                status = _SERVER_ERROR
            elif self.status:
                status = int(self.status[:3])
            else:
                status = _CLIENT_GONE
            if self.contexts:  # the app raised, or Flask ran only while the body was iterated
                self.take_rule()
            template = self.template
            if template.__class__ is str:
                self.middleware.telemetry._record_request(
                    self.method, status, (end - self.start) * 1000.0, template, self.path, None
                )
            else:
                self.middleware._record_unmatched(self, environ, status, end)
        except Exception:
            pass


def _chain(previous: Callable[[Any], object], contexts: list[Any]) -> Callable[[Any], None]:
    """Collect Flask's contexts and still hand them to whoever asked first (debugger, tests)."""

    def collect(context: Any) -> None:
        contexts.append(context)
        previous(context)

    return collect


def _flask_unmatched(contexts: list[Any]) -> tuple[Any, Any]:
    """(template, url_map) from Flask's contexts when the fast path found no rule.

    The template is the rule of a 405's path under an allowed method, None for 404s and
    redirects, `_MISSING` when no request context was handed over. The map is the Flask app's,
    for the static segments of the regex fallback.
    """
    for context in reversed(contexts):
        try:
            request = context.request
            rule = request.url_rule
        except Exception:
            continue
        url_map = getattr(getattr(context, "app", None), "url_map", None)
        if rule is not None:
            return str(rule.rule), url_map
        return _flask_405_rule(context, request), url_map
    return _MISSING, None


def _flask_405_rule(context: Any, request: Any) -> str | None:
    """For a 405, the rule the path matched under another method (None: 404s and redirects)."""
    allowed = getattr(getattr(request, "routing_exception", None), "valid_methods", None)
    adapter = getattr(context, "url_adapter", None)
    if not allowed or adapter is None:
        return None
    try:
        rule, _ = adapter.match(method=_pick_method(allowed), return_rule=True)
        return str(rule.rule)
    except Exception:
        return None


def _is_instance(body: object, file_wrapper: object) -> bool:
    """`isinstance(body, environ["wsgi.file_wrapper"])`, as servers test it; never raises."""
    try:
        return isinstance(file_wrapper, type) and isinstance(body, file_wrapper)
    except Exception:
        return False


# -- finding the routing table --


def _is_map(candidate: Any) -> bool:
    return hasattr(candidate, "bind_to_environ") and hasattr(candidate, "iter_rules")


def _discover_map(app: Any) -> Any:
    """A Werkzeug `Map` on the wrapped app, or on the object a bound `wsgi_app` belongs to."""
    for obj in (app, getattr(app, "__self__", None)):
        try:
            candidate = getattr(obj, "url_map", None)
        except Exception:
            continue
        if candidate is not None and _is_map(candidate):
            return candidate
    return None


def _pick_method(allowed: Iterable[str]) -> str:
    """The method whose rule a 405 reports: GET first, then any real method."""
    methods = sorted(str(m) for m in allowed)
    if "GET" in methods:
        return "GET"
    for method in methods:
        if method not in ("HEAD", "OPTIONS"):
            return method
    return methods[0]


def _match_map(url_map: Any, environ: WSGIEnvironment, method: str, path: str) -> str | None:
    """Match a plain Werkzeug `Map` once; a 405 reports the rule of an allowed method."""
    try:
        adapter = url_map.bind_to_environ(environ)
        # PATH_INFO carries the raw bytes as latin-1; Werkzeug matches the UTF-8 text.
        path_info = path.encode("latin-1", "replace").decode("utf-8", "replace")
        try:
            rule, _ = adapter.match(path_info, method, return_rule=True)
        except Exception as exc:  # NotFound, RequestRedirect, MethodNotAllowed
            allowed = getattr(exc, "valid_methods", None)
            if not allowed:
                return None
            rule, _ = adapter.match(path_info, _pick_method(allowed), return_rule=True)
        return str(rule.rule)
    except Exception:
        return None
