"""`CommandTracker`: one `cli_command` event for one CLI command, whatever way it ends.

    with telemetry.track_command(sys.argv) as command:
        command.job_count = run_jobs()

The block costs two clock reads, one argv sanitization and one queue append;
everything else happens on the emitter's worker. Telemetry never changes how
the command ends: every exception, `SystemExit` and `KeyboardInterrupt`
included, leaves the block exactly as it entered it.

Event properties (`cli_command`), and the rules where the contract leaves a choice:

- `command`, `command_args`: from `argv.sanitize_command`; `commands`, when
  given, is the tool's list of real command names: anything else is sent as
  ``<value>`` (argv alone cannot tell a short password typed first from a
  command name).
- `duration_ms`: `time.perf_counter()` from entering the block, in ms, 3 decimals.
- `success`: no exception, or `SystemExit` with code 0, None or False.
- `error_type`: only on failure: the exception's class name (`argv.error_type`),
  never its message; a failing `SystemExit` (non-zero int, or a message
  string) is `"SystemExit"`.
- `job_count`: only when set to an int in [0, 2**53); anything else is omitted.
- `object_counts`: only when set to a mapping; only entries whose key is a
  short identifier (`[A-Za-z_][A-Za-z0-9_.-]{0,63}`) and whose value is an
  int in [0, 2**53) are kept, at most 50 of them, in the mapping's order.
  Keys are meant to be object types (`charts`), never object names.
- `project_hash`: when known: set on the tracker (`project_name = ...` stores
  only the hash), else the one the `Telemetry` was built with. A
  `project_hash` that is not 16 lowercase hex digits is not sent.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from .argv import VALUE, error_type, sanitize_command
from .events import CLI_COMMAND

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = ["CommandTracker", "current_command", "track"]

F = TypeVar("F", bound=Callable[..., Any])

MAX_OBJECT_TYPES: Final = 50
_MAX_COUNT: Final = 2**53  # above this a JSON number loses precision
_OBJECT_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_HASH_RE: Final = re.compile(r"[0-9a-f]{16}")

_current: contextvars.ContextVar[CommandTracker | None] = contextvars.ContextVar(
    "telemetry_middleware_command", default=None
)


def current_command() -> CommandTracker | None:
    """The innermost tracker whose block is running, for code that cannot be handed it.

    The decorator form and the Click adapter open the block themselves; the
    command body reaches it here to set `job_count` and the like.
    """
    return _current.get()


class CommandTracker:
    """Context manager (and decorator) that emits one `cli_command` event per block.

    `argv` is as in `sys.argv` (program name first); None means `sys.argv` as
    it is when the block starts. `value_options`/`flag_options` name the
    options that take a value and the boolean flags, which makes the
    sanitized arguments exact; without them the argv-only rules still leak
    nothing. A tracker serves one block; used as a decorator it makes a fresh
    tracker for every call.
    """

    job_count: int | None
    object_counts: Mapping[str, int] | None
    project_hash: str | None

    def __init__(
        self,
        telemetry: Telemetry,
        argv: Sequence[str] | None = None,
        *,
        value_options: Collection[str] | None = None,
        flag_options: Collection[str] | None = None,
        commands: Collection[str] | None = None,
    ) -> None:
        self._telemetry = telemetry
        self._argv = argv
        self._value_options = value_options
        self._flag_options = flag_options
        self._commands = None if commands is None else frozenset(commands)
        self.job_count = None
        self.object_counts = None
        self.project_hash = None
        self._start: float | None = None
        self._described: tuple[str, list[str]] | None = None
        self._token: contextvars.Token[CommandTracker | None] | None = None

    # -- what the command body may set --

    @property
    def project_name(self) -> None:
        """Write-only: the raw name is never kept, only its salted hash (`project_hash`)."""
        return None

    @project_name.setter
    def project_name(self, name: str | None) -> None:
        try:
            self.project_hash = (
                self._telemetry.hash_project(name) if isinstance(name, str) and name else None
            )
        except Exception:
            self.project_hash = None

    # -- the context manager --

    def __enter__(self) -> CommandTracker:
        self._start = time.perf_counter()
        try:
            self._token = _current.set(self)
            if self._telemetry.enabled:
                self._described = self._describe_at_start()
        except Exception:
            pass
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Record the outcome; returns None so that every exception propagates unchanged."""
        end = time.perf_counter()
        try:
            token, self._token = self._token, None
            if token is not None:
                _current.reset(token)
        except Exception:  # reset from another context: leave the variable be
            pass
        try:
            if not self._telemetry.enabled:
                return
            if exc is None and exc_type is not None:
                exc = exc_type()  # `__exit__` called by hand with a class only
            start = end if self._start is None else self._start
            self._telemetry._record(CLI_COMMAND, self._properties(end - start, exc))
        except Exception:  # telemetry never turns into the command's outcome
            pass

    # -- the decorator --

    def __call__(self, func: F) -> F:
        """Decorate `func`: every call runs in a fresh tracker with this one's settings."""
        return _decorate(func, self._spawn)

    def _spawn(self) -> CommandTracker:
        return CommandTracker(
            self._telemetry,
            self._argv,
            value_options=self._value_options,
            flag_options=self._flag_options,
            commands=self._commands,
        )

    # -- building the event (hooks for adapters) --

    def _describe_at_start(self) -> tuple[str, list[str]] | None:
        """Sanitize at entry: argv may be changed by the command, and it is cheap."""
        argv = sys.argv if self._argv is None else self._argv
        command, args = sanitize_command(argv, self._value_options, self._flag_options)
        if self._commands is not None and command not in self._commands:
            command = VALUE
        return command, args

    def _describe(self) -> tuple[str, list[str]]:
        """`command` and `command_args`; adapters that learn them later override this."""
        return self._described if self._described is not None else (VALUE, [])

    def _outcome(self, exc: BaseException | None) -> tuple[bool, str | None]:
        """(success, error_type) for the exception that ended the block, if any."""
        if exc is None:
            return True, None
        if isinstance(exc, SystemExit):
            code = exc.code
            if code is None or (isinstance(code, int) and code == 0):
                return True, None
            return False, "SystemExit"
        return False, error_type(exc)

    def _properties(self, seconds: float, exc: BaseException | None) -> dict[str, Any]:
        command, args = self._describe()
        success, error = self._outcome(exc)
        props: dict[str, Any] = {
            "command": command,
            "command_args": args,
            "duration_ms": round(max(0.0, seconds) * 1000.0, 3),
            "success": success,
        }
        if not success:
            props["error_type"] = error or "Exception"
        job_count = _count(self.job_count)
        if job_count is not None:
            props["job_count"] = job_count
        object_counts = _object_counts(self.object_counts)
        if object_counts is not None:
            props["object_counts"] = object_counts
        project_hash = self.project_hash or self._telemetry.project_hash
        if isinstance(project_hash, str) and _HASH_RE.fullmatch(project_hash):
            props["project_hash"] = str.__str__(project_hash)
        return props


def track(
    telemetry: Telemetry,
    argv: Sequence[str] | None = None,
    *,
    value_options: Collection[str] | None = None,
    flag_options: Collection[str] | None = None,
    commands: Collection[str] | None = None,
) -> Callable[[F], F]:
    """Decorator: each call of the function is one `cli_command` event.

    With `argv` None, `sys.argv` is read at each call. The body reaches its
    tracker through `current_command()`.
    """

    def make() -> CommandTracker:
        return CommandTracker(
            telemetry,
            argv,
            value_options=value_options,
            flag_options=flag_options,
            commands=commands,
        )

    def decorator(func: F) -> F:
        return _decorate(func, make)

    return decorator


def _decorate(func: F, make: Callable[[], CommandTracker]) -> F:
    """Wrap sync and async functions alike; async ones are timed until they finish."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with make():
                return await func(*args, **kwargs)

        return cast(F, run_async)

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with make():
            return func(*args, **kwargs)

    return cast(F, run)


def _count(value: object) -> int | None:
    """A plain non-negative int that JSON carries exactly, else None (bools are not counts)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT:
        return int(value)
    return None


def _object_counts(value: object) -> dict[str, int] | None:
    """The valid entries of a mapping of object type -> count; None when it is no mapping."""
    if not isinstance(value, Mapping):
        return None
    out: dict[str, int] = {}
    for key, count in value.items():
        if len(out) >= MAX_OBJECT_TYPES:
            break
        if not isinstance(key, str):
            continue
        name = str.__str__(key)
        number = _count(count)
        if number is not None and _OBJECT_KEY_RE.fullmatch(name):
            out[name] = number
    return out
