"""A small but real Flask app, instrumented with telemetry-middleware in one line.

    python -m telemetry_middleware capture-server            # terminal 1: see what is sent
    gunicorn -w 2 examples.flask_app.app:app                 # terminal 2, from the repo root
    flask --app examples.flask_app.app run                   # or the Werkzeug dev server
    python -m examples.flask_app.app                         # or the same, on PORT (5000)

It has what real Flask apps have, so every endpoint case of the middleware shows up: blueprints
with URL prefixes (`users` nested in `api`), converters (int, string, uuid, path), JSON in and
out, a streaming response, a file sent with `send_file` (zero-copy under gunicorn), an endpoint
that raises, a route with a trailing slash (so `/docs` is a 308 redirect), and 404s and 405s.

Telemetry goes to the local capture server by default (`host` below); `VISIVO_POSTHOG_HOST` and
`VISIVO_POSTHOG_API_KEY` override host and key, and `VISIVO_TELEMETRY_DISABLED=1` turns it off.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, abort, jsonify, request, send_file

from telemetry_middleware import Telemetry, WSGITelemetryMiddleware

HERE = Path(__file__).resolve().parent
STREAM_CHUNKS = 5
STREAM_DELAY = 0.1  # seconds between chunks of /stream, unless ?delay= says otherwise


def default_telemetry() -> Telemetry:
    """The tool's own defaults; the environment can override host and key, or opt out."""
    return Telemetry(
        app_name="visivo",
        app_version="1.4.0",
        project_name="demo-project",
        api_key="phc_demo_key",
        host="http://127.0.0.1:8765",
    )


# -- /api/users: a blueprint nested in /api --

users = Blueprint("users", __name__, url_prefix="/users")
USERS: dict[int, dict[str, Any]] = {
    424242: {"id": 424242, "name": "Jane", "orders": ["9b2f4c1e-2d7a-4f3b-8c5e-6a1d0e9f7b3c"]},
}


@users.get("/<int:user_id>")
def get_user(user_id: int) -> Any:
    user = USERS.get(user_id)
    if user is None:
        abort(404)  # a matched rule with a 404 status: the endpoint is still the template
    return jsonify(user)


@users.route("/<int:user_id>", methods=["PUT"])
def update_user(user_id: int) -> Any:
    body = request.get_json(silent=True) or {}
    USERS.setdefault(user_id, {"id": user_id, "orders": []}).update(
        {k: v for k, v in body.items() if k == "name"}
    )
    return jsonify(USERS[user_id])


@users.get("/<int:user_id>/orders/<uuid:order_id>")
def get_order(user_id: int, order_id: uuid.UUID) -> Any:
    return jsonify({"user": user_id, "order": str(order_id), "status": "shipped"})


@users.get("/by-name/<string:username>")
def find_user(username: str) -> Any:
    found = [u for u in USERS.values() if str(u.get("name", "")).lower() == username.lower()]
    return jsonify({"matches": found})


# -- /api: projects and files, plus the nested users blueprint --

api = Blueprint("api", __name__, url_prefix="/api")


@api.post("/projects")
def create_project() -> Any:
    body = request.get_json(silent=True) or {}
    return jsonify({"id": str(uuid.uuid4()), "name": body.get("name", "untitled")}), 201


@api.get("/projects/<uuid:project_id>/files/<path:file_path>")
def get_file(project_id: uuid.UUID, file_path: str) -> Any:
    return jsonify({"project": str(project_id), "path": file_path})


api.register_blueprint(users)


def create_app(telemetry: Telemetry | None = None) -> Flask:
    """The example app; without `telemetry` it is the same app, uninstrumented."""
    app = Flask(__name__)

    @app.get("/")
    def home() -> Any:
        return {"app": "visivo demo", "try": ["/api/users/424242", "/stream", "/boom"]}

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok"}

    @app.get("/pid")
    def pid() -> Any:
        """Which worker process answered (the prefork tests look at it)."""
        return {"pid": os.getpid()}

    @app.get("/docs/")
    def docs() -> Any:
        return {"docs": "see README.md"}  # `/docs` gets Werkzeug's 308 to `/docs/`

    @app.get("/stream")
    def stream() -> Response:
        chunks = request.args.get("chunks", default=STREAM_CHUNKS, type=int)
        delay = request.args.get("delay", default=STREAM_DELAY, type=float)

        def generate() -> Iterator[str]:
            for i in range(max(0, min(chunks, 100))):
                if i:
                    time.sleep(max(0.0, min(delay, 1.0)))
                yield f"chunk {i}\n"

        return Response(generate(), mimetype="text/plain")

    @app.get("/download")
    def download() -> Response:
        return send_file(HERE / "README.md", mimetype="text/markdown")

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("the chart renderer crashed on secret-table-name")

    app.register_blueprint(api)
    if telemetry is not None:  # the one line that adds telemetry:
        app.wsgi_app = WSGITelemetryMiddleware(app.wsgi_app, telemetry=telemetry)  # type: ignore[method-assign]
    return app


app = create_app(default_telemetry())


def main() -> None:
    """The Werkzeug dev server; SIGTERM stops it like Ctrl-C, so pending events are delivered."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    app.run(host=host, port=port, threaded=True)


if __name__ == "__main__":
    main()
