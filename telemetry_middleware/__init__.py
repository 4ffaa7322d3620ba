"""Anonymous, privacy-first usage telemetry for Python developer tools, sent to PostHog.

    telemetry = Telemetry(app_name="visivo", app_version="1.4.0", api_key="phc_...")
    app.add_middleware(ASGITelemetryMiddleware, telemetry=telemetry)

Importing this package is cheap: no framework and no `posthog` is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .telemetry import Telemetry

if TYPE_CHECKING:
    from .asgi import ASGITelemetryMiddleware
    from .wsgi import WSGITelemetryMiddleware

__all__ = ["ASGITelemetryMiddleware", "Telemetry", "WSGITelemetryMiddleware"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Load an adapter module only when it is asked for."""
    if name == "ASGITelemetryMiddleware":
        from .asgi import ASGITelemetryMiddleware

        return ASGITelemetryMiddleware
    if name == "WSGITelemetryMiddleware":
        from .wsgi import WSGITelemetryMiddleware

        return WSGITelemetryMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
