"""`Telemetry`: the one object a tool creates; it ties settings, identity and the emitter.

Adapters (ASGI, WSGI, CLI) only call `_record_request`, `_record` and `capture`,
which never raise and never block.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .events import API_REQUEST, CUSTOM, FINAL, NEW_INSTALLATION, REQUEST

if TYPE_CHECKING:
    from .command import CommandTracker
    from .delivery import Sink
    from .emitter import Emitter
    from .events import EventBuilder
    from .settings import Settings, Status

RequestRecorder = Callable[..., None]
"""`(method, status_code, duration_ms, template, raw_path=None, static_segments=None)`."""

_MAX_EVENT_NAME = 200


class Telemetry:
    """Anonymous usage telemetry for one tool (`app_name`), sent to PostHog.

    Construction reads the environment and config files once; when any source
    opts out, the object is inert: no thread, no socket, no file written, and
    `posthog` is never imported.
    """

    def __init__(
        self,
        app_name: str,
        app_version: str,
        project_name: str | None = None,
        project_dir: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        host: str | None = None,
        *,
        project_salt: str | None = None,
        shutdown_timeout: float = 1.0,
        max_queue_size: int = 10_000,
        flush_interval: float = 1.0,
        exit_handoff: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from . import settings as _settings
        from .identity import new_session_id, project_hash

        self.app_name = _settings.check_app_name(app_name)
        self.app_version = str(app_version)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self.settings: Settings = _settings.resolve(
            app_name, project_dir=project_dir, api_key=api_key, host=host, environ=environ
        )
        self.session_id = new_session_id()
        _new_session_in_forked_children(self)
        self._project_salt = project_salt
        self.project_hash = (
            project_hash(app_name, project_name, project_salt) if project_name else None
        )
        self._emitter: Emitter | None = None
        if self.settings.enabled:
            from .emitter import Emitter

            self._emitter = Emitter(
                self._make_builder,
                self._make_sink,
                hand_off=self._hand_off if exit_handoff else None,
                max_queue_size=max_queue_size,
                flush_interval=flush_interval,
                shutdown_timeout=shutdown_timeout,
            )

        self._record_request: RequestRecorder = self._request_recorder()

    # -- state --

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def dropped_events(self) -> int:
        """Events dropped because the queue was full or delivery gave up."""
        return self._emitter.dropped if self._emitter is not None else 0

    def status(self) -> Status:
        from .settings import Status

        return Status(
            enabled=self.settings.enabled,
            reason=self.settings.reason,
            debug=self.settings.debug,
            host=self.settings.host,
            dropped_events=self.dropped_events,
        )

    def hash_project(self, project_name: str) -> str:
        """The same salted hash as `project_hash`, for a project known only later."""
        from .identity import project_hash

        return project_hash(self.app_name, project_name, self._project_salt)

    # -- recording: cheap, never raises --

    def capture(self, event: str, properties: Mapping[str, Any] | None = None) -> None:
        """Queue a custom event; its properties are cleaned on the worker."""
        emitter = self._emitter
        if emitter is None:
            return
        try:
            if not isinstance(event, str) or not 0 < len(event) <= _MAX_EVENT_NAME:
                return
            emitter.put((event, time.time(), CUSTOM, dict(properties or ())))
        except Exception:
            pass

    def _record(self, event: str, properties: dict[str, Any]) -> None:
        """Queue an event whose properties are already final (the CLI adapter's path)."""
        emitter = self._emitter
        if emitter is not None:
            emitter.put((event, time.time(), FINAL, properties))

    def _request_recorder(self) -> RequestRecorder:
        """The middlewares' fast path, as a plain function: store a tuple and return.

        Installed as the instance attribute `_record_request`, so a middleware's call
        costs one function call and a `deque.append`; the endpoint is worked out later
        on the worker.
        """
        emitter = self._emitter
        if emitter is None:

            def record_nothing(*args: Any) -> None:
                return None

            return record_nothing
        put = emitter.put
        queue, room = emitter.fast_lane()
        now = time.time

        def record(
            method: str,
            status_code: int,
            duration_ms: float,
            template: str | None,
            raw_path: str | None = None,
            static_segments: frozenset[str] | None = None,
        ) -> None:
            item = (
                API_REQUEST,
                now(),
                REQUEST,
                (method, status_code, duration_ms, template, raw_path, static_segments),
            )
            # `put` inlined for the common case (worker running, queue short): one call less.
            if len(queue) < room and emitter.accepting:
                queue.append(item)
            else:
                put(item)

        return record

    # -- the worker's side --

    def _request_properties(self) -> Callable[[Any], dict[str, Any]]:
        """The worker's function from a request record to `api_request` properties."""
        from .paths import normalize_method, normalize_path, template_endpoint

        extra = {"project_hash": self.project_hash} if self.project_hash is not None else {}

        def properties(payload: Any) -> dict[str, Any]:
            method, status_code, duration_ms, template, raw_path, static_segments = payload
            if template is not None:
                endpoint = template_endpoint(template)
            else:
                endpoint = normalize_path(raw_path or "/", static_segments)
            return {
                "endpoint": endpoint,
                "method": normalize_method(method),
                "status_code": int(status_code),
                "duration_ms": round(float(duration_ms), 3),
                **extra,
            }

        return properties

    def _make_builder(self) -> EventBuilder:
        """On the worker thread: the first moment any file may be read or written."""
        from .ci import detect_ci
        from .environment import common_properties
        from .events import EventBuilder
        from .identity import load_machine_id

        is_ci = detect_ci(self._environ)
        machine = load_machine_id(self.settings.config_dir, is_ci)
        common = common_properties(self.app_name, self.app_version, self.session_id, self._environ)
        common["is_ci"] = is_ci
        if machine.created and self._emitter is not None:
            self._emitter.put_first((NEW_INSTALLATION, time.time(), FINAL, {}))
        return EventBuilder(machine.value, common, self._request_properties())

    def _hand_off(self, builder: EventBuilder, records: list[Any]) -> bool:
        """At exit, before the sender is ready: let a detached process deliver."""
        if self.settings.debug or self.settings.api_key is None:
            return False
        from .handoff import spawn

        return spawn(builder.build(records), self.settings.api_key, self.settings.host)

    def _make_sink(self) -> Sink:
        from .delivery import DebugSink, PostHogSink

        if self.settings.debug:
            return DebugSink()
        assert self.settings.api_key is not None
        sink = PostHogSink(self.settings.api_key, self.settings.host)
        return sink

    # -- control --

    def track_command(
        self,
        argv: Sequence[str] | None = None,
        *,
        value_options: Collection[str] | None = None,
        flag_options: Collection[str] | None = None,
        commands: Collection[str] | None = None,
    ) -> CommandTracker:
        """One `cli_command` event for the block (or decorated function) it wraps.

        `argv` defaults to `sys.argv`. When the tool knows which options take a
        value, or its command names, passing them makes the sanitizing exact.
        """
        from .command import CommandTracker

        return CommandTracker(
            self,
            argv,
            value_options=value_options,
            flag_options=flag_options,
            commands=commands,
        )

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait at most `timeout` seconds for queued events; True if all were handled."""
        if self._emitter is None:
            return True
        try:
            return self._emitter.flush(timeout)
        except Exception:
            return False

    def shutdown(self, timeout: float = 1.0) -> None:
        """Deliver what is pending within `timeout`, then accept nothing more."""
        if self._emitter is not None:
            try:
                self._emitter.shutdown(timeout)
            except Exception:
                pass


def _new_session_in_forked_children(telemetry: Telemetry) -> None:
    """A session is one process: a forked worker (gunicorn --preload) starts its own."""
    from .identity import new_session_id

    ref = weakref.ref(telemetry)

    def renew() -> None:
        alive = ref()
        if alive is not None:
            alive.session_id = new_session_id()

    os.register_at_fork(after_in_child=renew)
