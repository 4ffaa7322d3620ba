"""Send finished batches: to PostHog through its SDK, or to stderr in debug mode.

Runs only on the worker thread. Failures never surface: they are counted, the
worker backs off, and after repeated failures the sender gives up for good.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, Protocol

# Loggers whose records come from our delivery: posthog's, and the HTTP stack
# under it. Records from the worker thread are dropped at the source; records
# from the host's own use of these libraries pass untouched, and no level,
# handler or propagation setting is changed.
_QUIET_LOGGERS = (
    "posthog",
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
    "charset_normalizer",
)

MAX_CONSECUTIVE_FAILURES = 5
MAX_BACKOFF = 30.0


class Sink(Protocol):
    """Where finished batches go."""

    def send(self, events: list[dict[str, Any]]) -> bool:
        """Deliver one batch; False when it should be retried later."""
        ...

    @property
    def retry_after(self) -> float:
        """`time.monotonic()` deadline before which no retry should be made."""
        ...

    @property
    def dead(self) -> bool:
        """True once retrying is pointless for the rest of the process."""
        ...

    @property
    def ready(self) -> bool:
        """True once sending costs no more set-up (the SDK is imported)."""
        ...

    def prepare(self) -> None:
        """Do the slow set-up; called on the worker thread before any record is taken."""
        ...

    def close(self) -> None: ...


class _ThreadFilter(logging.Filter):
    def __init__(self, thread_ids: set[int]) -> None:
        super().__init__("telemetry_middleware")
        self.thread_ids = thread_ids

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.thread_ids


_QUIET_THREADS: set[int] = set()
_filter_installed = False
_filter_lock = threading.Lock()


def silence_current_thread() -> None:
    """Drop log records that the current (worker) thread emits through the HTTP stack."""
    global _filter_installed
    _QUIET_THREADS.add(threading.get_ident())
    with _filter_lock:
        if not _filter_installed:
            quiet = _ThreadFilter(_QUIET_THREADS)
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).addFilter(quiet)
            _filter_installed = True


def forget_thread(ident: int) -> None:
    _QUIET_THREADS.discard(ident)


class DebugSink:
    """Debug mode: one `[telemetry] {json}` line per event on stderr, nothing sent."""

    retry_after = 0.0
    dead = False
    ready = True

    def prepare(self) -> None:
        pass

    def send(self, events: list[dict[str, Any]]) -> bool:
        try:
            for event in events:
                sys.stderr.write("[telemetry] " + json.dumps(event, sort_keys=True) + "\n")
            sys.stderr.flush()
        except Exception:  # a closed stderr must not break the worker
            pass
        return True

    def close(self) -> None:
        pass


def is_loopback(host: str) -> bool:
    rest = host.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    name = rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest.split("]")[0] + "]"
    return name in ("localhost", "[::1]") or name.startswith("127.")


class PostHogSink:
    """Posts batches with `posthog.request.batch_post` on a session of our own.

    Our own `requests` session has no transport retries (we retry whole batches
    with backoff) and is recreated in forked children, never shared.
    """

    def __init__(self, api_key: str, host: str, timeout: float = 3.0) -> None:
        self._api_key = api_key
        self._host = host
        self._timeout = timeout
        self._gzip = not is_loopback(host)
        self._session: Any = None
        self._batch_post: Any = None
        self.failures = 0
        self.retry_after = 0.0
        self.dead = False

    def prepare(self) -> None:
        """Import the SDK (slow: about 0.1 s) on the worker thread, never at host import."""
        if self._batch_post is None:
            import requests
            from posthog.request import batch_post

            self._session = requests.Session()
            self._batch_post = batch_post

    @property
    def ready(self) -> bool:
        return self._batch_post is not None

    def send(self, events: list[dict[str, Any]]) -> bool:
        """True when the batch was accepted; on failure sets `retry_after` or `dead`."""
        try:
            self.prepare()
            self._batch_post(
                self._api_key,
                host=self._host,
                gzip=self._gzip,
                timeout=self._timeout,
                session=self._session,
                batch=events,
            )
        except Exception as exc:
            self.failures += 1
            if self.failures >= MAX_CONSECUTIVE_FAILURES:
                self.dead = True
            hinted = getattr(exc, "retry_after", None)
            backoff = min(MAX_BACKOFF, 0.5 * 2 ** (self.failures - 1))
            if isinstance(hinted, (int, float)) and hinted > 0:
                backoff = min(MAX_BACKOFF * 4, max(backoff, float(hinted)))
            self.retry_after = time.monotonic() + backoff
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                self.dead = True  # a bad key or a refused payload will not get better
            return False
        self.failures = 0
        self.retry_after = 0.0
        return True

    def close(self) -> None:
        try:
            if self._session is not None:
                self._session.close()
        except Exception:
            pass
