"""How cheap can a close()-timed WSGI wrapper be? Minimal shapes against bare Flask.

    .venv/bin/python bench/wsgi_floors.py

Both floors only note the status and time the response until `close()`, then append to
a deque: no template, no 500 on iteration errors, no event. One wraps the body in a small
class, the other in a generator whose `finally` does the work. They bound from below what
any WSGI middleware with the documented timing can cost on this machine.

Two smaller pieces show where a floor's cost comes from: a bare pass-through layer (what
`telemetry off` costs), and a layer that only keeps one small record per request in a
bounded deque, with no status and no timing to `close()`. The rest of a floor is the
`start_response` wrapper and the object that waits for `close()`.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
sink: deque[tuple[str, float]] = deque(maxlen=10_000)


def make_app() -> Flask:
    app = Flask("floors")

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    return app


class _Body:
    def __init__(self, inner: Iterable[bytes], start: float, status: list[str]) -> None:
        self.inner, self.start, self.status = inner, start, status

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
        sink.append((self.status[0], time.perf_counter() - self.start))


def _noting_status(start_response: Callable[..., Any], status: list[str]) -> Callable[..., Any]:
    """A `start_response` that keeps the status line in `status[0]`."""

    def capture(line: str, headers: Any, exc_info: Any = None) -> Any:
        status[0] = line
        return start_response(line, headers, exc_info)

    return capture


def pass_through(app: WSGIApp) -> WSGIApp:
    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return app(environ, start_response)

    return middleware


def record_only(app: WSGIApp) -> WSGIApp:
    """Keep `(path, start, wall clock)` per request; nothing about the response."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start = time.perf_counter()
        body = app(environ, start_response)
        sink.append((environ.get("PATH_INFO"), start, time.time()))
        return body

    return middleware


def class_floor(app: WSGIApp) -> WSGIApp:
    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start = time.perf_counter()
        status = [""]
        capture = _noting_status(start_response, status)
        return _Body(app(environ, capture), start, status)

    return middleware


def generator_floor(app: WSGIApp) -> WSGIApp:
    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start = time.perf_counter()
        status = [""]
        capture = _noting_status(start_response, status)
        body = app(environ, capture)

        def chunks() -> Iterator[bytes]:
            try:
                yield from body
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                sink.append((status[0], time.perf_counter() - start))

        return chunks()

    return middleware


def main(rounds: int = 150, calls: int = 90) -> None:
    flask_app = make_app()
    bare: WSGIApp = flask_app.wsgi_app
    variants = {
        "bare": bare,
        "pass-through": pass_through(bare),
        "record only": record_only(bare),
        "class floor": class_floor(bare),
        "generator floor": generator_floor(bare),
    }
    environ = EnvironBuilder(path="/users/42").get_environ()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, app in variants.items():
            gc.disable()
            began = time.thread_time()
            for _ in range(calls):
                body = app(dict(environ), start_response)
                for _chunk in body:
                    pass
                getattr(body, "close", lambda: None)()
            samples[name].append((time.thread_time() - began) / calls * 1e6)
            gc.enable()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in medians.items():
        print(f"{name:<16} {value:7.2f} µs  ({value - medians['bare']:+.2f})")


if __name__ == "__main__":
    main()
