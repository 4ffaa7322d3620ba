"""Turn recorded values into PostHog events that carry exactly the documented properties.

This runs on the worker thread, so the request path only stores a tuple.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

# What keeps PostHog from storing an address or a location: the server fills an
# empty `$ip` from the connection, so a fixed placeholder goes in its place.
PRIVACY_PROPERTIES: dict[str, object] = {"$geoip_disable": True, "$ip": "0.0.0.0"}

API_REQUEST = "api_request"
CLI_COMMAND = "cli_command"
NEW_INSTALLATION = "new_installation"

_MAX_CUSTOM_PROPERTIES = 32
_MAX_KEY = 64
_MAX_STRING = 200

# A record is what the caller's thread stores: (event name, unix time, kind,
# payload). The kind says how the worker turns the payload into properties:
FINAL = 0  # a dict of finished properties (CLI commands, new_installation)
CUSTOM = 1  # a dict from the host's own `capture()` call, cleaned here
REQUEST = 2  # an API request tuple, normalised here, off the request path
Record = tuple[str, float, int, Any]


def uuid4_strings(count: int) -> list[str]:
    """Many random UUID4 strings from one urandom call: per-event `uuid.uuid4()` is slow."""
    raw = os.urandom(16 * count).hex()
    out = []
    for i in range(0, 32 * count, 32):
        h = raw[i : i + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}")
    return out


_last_second: tuple[int, str] = (-1, "")


def iso_utc(ts: float) -> str:
    """RFC 3339 UTC with milliseconds; the date-and-time prefix is reused within a second."""
    global _last_second
    whole = int(ts)
    cached = _last_second
    if cached[0] != whole:
        tm = time.gmtime(whole)
        cached = _last_second = (
            whole,
            f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}.",
        )
    return f"{cached[1]}{int((ts - whole) * 1000):03d}Z"


def clean_custom_properties(properties: Mapping[Any, Any] | None) -> dict[str, object]:
    """Keep only short keys with plain scalar values; never let them override ours.

    Custom events come from the host tool's own code, but anything that is not
    a plain number, bool or short string is dropped rather than stringified,
    so an object's repr cannot carry data out.
    """
    if not properties:
        return {}
    out: dict[str, object] = {}
    for key, value in properties.items():
        if len(out) >= _MAX_CUSTOM_PROPERTIES:
            break
        if not isinstance(key, str) or not key or len(key) > _MAX_KEY or key.startswith("$"):
            continue
        if value is None or isinstance(value, (bool, int)):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
        elif isinstance(value, str) and len(value) <= _MAX_STRING and value.isprintable():
            out[key] = value
    return out


class EventBuilder:
    """Builds finished event dicts for one process identity."""

    def __init__(
        self,
        distinct_id: str,
        common: Mapping[str, object],
        request_properties: Callable[[Any], dict[str, Any]],
    ) -> None:
        self._distinct_id = distinct_id
        self._common = {**common, **PRIVACY_PROPERTIES}
        self._request_properties = request_properties

    def properties(self, kind: int, payload: Any) -> dict[str, Any]:
        if kind == REQUEST:
            props = self._request_properties(payload)
        elif kind == CUSTOM:
            props = clean_custom_properties(payload)
        else:
            props = dict(payload)
        return {**props, **self._common}

    def build(self, records: list[Record]) -> list[dict[str, Any]]:
        """Finished events; a record that cannot be built is skipped, never fatal."""
        ids = uuid4_strings(len(records))
        events = []
        for (name, ts, kind, payload), event_uuid in zip(records, ids, strict=True):
            try:
                properties = self.properties(kind, payload)
            except Exception:
                continue
            events.append(
                {
                    "event": name,
                    "distinct_id": self._distinct_id,
                    "properties": properties,
                    "timestamp": iso_utc(ts),
                    "uuid": event_uuid,
                }
            )
        return events
