"""The common metadata every event carries: versions, platform and the CI flag."""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping

from .ci import detect_ci

_PLATFORMS = {"win32": "windows", "cygwin": "windows", "darwin": "darwin"}


def platform_name() -> str:
    """`linux`, `darwin`, `windows`, or the lowercased system name for anything else."""
    if sys.platform.startswith("linux"):
        return "linux"
    return _PLATFORMS.get(sys.platform) or (platform.system().lower() or sys.platform)


def _bounded(value: str, limit: int = 64) -> str:
    return value[:limit] if value.isprintable() else "unknown"


def common_properties(
    app_name: str, app_version: str, session_id: str, environ: Mapping[str, str]
) -> dict[str, object]:
    """Computed once per process, off the request path: `platform` calls can be slow."""
    return {
        f"{app_name}_version": _bounded(str(app_version)),
        "python_version": platform.python_version(),
        "platform": platform_name(),
        "platform_version": _bounded(platform.release() or "unknown"),
        "architecture": _bounded(platform.machine() or "unknown"),
        "session_id": session_id,
        "is_ci": detect_ci(environ),
    }
