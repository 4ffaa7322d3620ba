"""A small but real FastAPI app, instrumented with telemetry-middleware in one line.

    python -m telemetry_middleware capture-server          # terminal 1: see what is sent
    uvicorn examples.fastapi_app.app:app --port 8000       # terminal 2, from the repo root

It has what real apps have, so every endpoint case of the middleware shows up: routers with
prefixes (one nested in another, one with a path parameter in its prefix), a mounted Starlette
sub-application, a `Mount` whose prefix carries a tenant name, static files, path parameters of
several types, a streaming response, a background task, a long poll that notices a client
leaving, an endpoint that raises, a WebSocket, a lifespan and CORS.

Telemetry goes to the local capture server by default (`host` below); `VISIVO_POSTHOG_HOST` and
`VISIVO_POSTHOG_API_KEY` override host and key, and `VISIVO_TELEMETRY_DISABLED=1` turns it off.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from telemetry_middleware import ASGITelemetryMiddleware, Telemetry

HERE = Path(__file__).resolve().parent
STREAM_CHUNKS = 5
STREAM_DELAY = 0.1  # seconds between chunks of /stream
BACKGROUND_SECONDS = 0.3  # how long the background task of POST .../runs works
LONG_POLL_SECONDS = 5.0


def default_telemetry() -> Telemetry:
    """The tool's own defaults; the environment can override host and key, or opt out."""
    return Telemetry(
        app_name="visivo",
        app_version="1.4.0",
        project_name="demo-project",
        api_key="phc_demo_key",
        host="http://127.0.0.1:8765",
    )


# -- /api/v1/projects, with a nested router for charts --

projects = APIRouter(prefix="/projects", tags=["projects"])
charts = APIRouter(prefix="/{project_id}/charts", tags=["charts"])
runs_done: list[int] = []  # what background tasks finished (the tests look at it)


@projects.get("/{project_id}")
async def get_project(project_id: int) -> dict[str, Any]:
    return {"id": project_id, "name": f"project {project_id}"}


@projects.get("/{project_id}/files/{file_path:path}")
async def get_file(project_id: int, file_path: str) -> dict[str, Any]:
    return {"project": project_id, "path": file_path}


async def index_run(project_id: int) -> None:
    """Work that happens after the response went out; not part of the request's duration."""
    await asyncio.sleep(BACKGROUND_SECONDS)
    runs_done.append(project_id)


@projects.post("/{project_id}/runs", status_code=202)
async def start_run(project_id: int, background: BackgroundTasks) -> dict[str, Any]:
    background.add_task(index_run, project_id)
    return {"project": project_id, "status": "queued"}


@charts.get("/{chart_id}")
async def get_chart(project_id: int, chart_id: uuid.UUID) -> dict[str, Any]:
    return {"project": project_id, "chart": str(chart_id)}


projects.include_router(charts)

# -- /api/v1/users and a long poll --

users = APIRouter(prefix="/users", tags=["users"])


@users.get("/{username}")
async def get_user(username: str) -> dict[str, Any]:
    return {"username": username}


events = APIRouter(prefix="/events", tags=["events"])


@events.get("/wait")
async def wait_for_event(request: Request) -> dict[str, Any]:
    """A long poll: answers after a while, or gives up when the client leaves."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LONG_POLL_SECONDS
    while loop.time() < deadline:
        if await request.is_disconnected():
            return {"event": None, "reason": "client left"}
        await asyncio.sleep(0.02)
    return {"event": None, "reason": "timeout"}


api = APIRouter(prefix="/api/v1")
api.include_router(projects)
api.include_router(users)
api.include_router(events)

# -- a Starlette sub-application and a tenant mount --


async def admin_home(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"admin": True})


async def admin_job(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"job": request.path_params["job_id"]})


def admin_app() -> Starlette:
    return Starlette(
        routes=[Route("/", admin_home), Route("/jobs/{job_id:int}", admin_job)],
    )


async def tenant_dashboard(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse(f"dashboard of {request.path_params['tenant']}")


async def tenant_dashboard_item(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse(f"dashboard {request.path_params['dashboard_id']}")


def tenant_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/dashboard", tenant_dashboard),
            Route("/dashboards/{dashboard_id}", tenant_dashboard_item),
        ]
    )


def create_app(telemetry: Telemetry | None = None) -> FastAPI:
    """The example app; without `telemetry` it is the same app, uninstrumented."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.started = True
        yield
        if telemetry is not None:
            telemetry.shutdown(1.0)  # deliver what is pending before the process exits

    app = FastAPI(title="visivo demo", lifespan=lifespan)
    app.state.started = False

    @app.get("/")
    async def home() -> dict[str, Any]:
        return {"app": "visivo demo", "docs": "/docs"}

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", "started": request.app.state.started}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    await asyncio.sleep(STREAM_DELAY)
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the chart renderer crashed on secret-table-name")

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    app.include_router(api)
    app.mount("/admin", admin_app())
    app.mount("/t/{tenant}", tenant_app())
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["http://localhost:3000"],
        allow_methods=["*"],
        allow_headers=["*"],
    )
    if telemetry is not None:
        app.add_middleware(ASGITelemetryMiddleware, telemetry=telemetry)  # the one line
    return app


app = create_app(default_telemetry())
