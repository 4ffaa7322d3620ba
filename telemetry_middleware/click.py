"""Click integration: one `cli_command` event per invocation of a Click CLI, in one line.

    import click
    from telemetry_middleware.click import current_command, instrument_click

    @click.group()
    def cli() -> None: ...

    @cli.command()
    @click.option("--threads", type=int)
    def run(threads: int | None) -> None:
        command = current_command()          # the running tracker, or None
        if command is not None:
            command.job_count = 12

    instrument_click(cli, telemetry)         # after the commands are registered

Nothing in the core imports this module, so Click stays optional.

What the event holds, and why:

- `command`: the registered names of the commands Click resolved, joined by a
  space for nested groups (`"db migrate"`) and chained commands alike; the
  top-level group's own name is not part of it (`visivo run` gives `"run"`).
  No subcommand resolved (`cli --help`, `cli --version`, a group-level usage
  error): `"help"`. A subcommand Click does not know: ``<value>``, never the
  typed text, which could be anything.
- `command_args`: every level's tokens sanitized with that command's own
  option table from Click (options that take a value, boolean and count
  flags, the help option), so `--threads -5` is a value and `-vvv` three
  flags. Options with an optional value, and anything the table cannot place,
  fall back to the argv-only rules, which still leak nothing.
- Outcome: read from the exception Click raised before turning it into an
  exit code. `--help` is a success (`ctx.exit(0)`); a usage error is a failure
  whose `error_type` is the exception class (`UsageError`, `NoSuchOption`,
  `MissingParameter`, ...); Ctrl-C is `KeyboardInterrupt`; `ctx.exit(n)` with
  n != 0 is `Exit`.
- Shell completion (Click's `_<PROG>_COMPLETE` variable set) sends nothing: a
  tab press is not a command.

The whole `main()` is timed: parsing, the group callbacks and the command.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from .argv import HELP_COMMAND, MAX_ARGS, TRUNCATED, VALUE, error_type, sanitize_command
from .command import CommandTracker, current_command

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = ["current_command", "instrument_click"]

C = TypeVar("C", bound=click.Command)

_STATE_ATTR: Final = "_telemetry_middleware_state"
_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_COMPLETE_VAR_RE: Final = re.compile(r"_[A-Z0-9_]+_COMPLETE")
_MAX_PATH: Final = 8
_DEFAULT_HELP: Final = ("--help",)


@dataclass
class _State:
    """Per instrumented root: which `Telemetry` to use (re-instrumenting rebinds it)."""

    telemetry: Telemetry


@dataclass
class _Step:
    """One `resolve_command` call: the tokens it saw and the command it found."""

    args: list[str]
    command: click.Command | None
    help_names: tuple[str, ...]


def instrument_click(cli: C, telemetry: Telemetry) -> C:
    """Make every invocation of `cli` (usually a `click.Group`) emit one `cli_command` event.

    Returns `cli` itself, changed in place, so `cli = instrument_click(cli, t)`
    and a bare call both work. Subgroups are picked up as Click resolves them,
    including ones a lazy group creates on demand. Calling it again rebinds
    the `Telemetry`.
    """
    existing = getattr(cli, _STATE_ATTR, None)
    if isinstance(existing, _State):
        existing.telemetry = telemetry
        return cli
    state = _State(telemetry)
    setattr(cli, _STATE_ATTR, state)  # click declares no such attribute

    original_main = cli.main
    original_make_context = cli.make_context
    original_invoke = cli.invoke

    def main(
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        tracker: _ClickTracker | None = None
        try:
            if args is not None:
                args = list(args)  # an iterator would reach Click empty after we read it
            if not _completing(complete_var, prog_name):
                tokens = sys.argv[1:] if args is None else args
                tracker = _ClickTracker(state.telemetry, cli, _texts(tokens))
        except Exception:
            tracker = None
        with tracker if tracker is not None else contextlib.nullcontext():
            return original_main(
                args,
                prog_name,
                complete_var,
                standalone_mode,
                windows_expand_args=windows_expand_args,
                **extra,
            )

    def make_context(
        info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return original_make_context(info_name, args, parent, **extra)
        except BaseException as exc:
            _note(cli, exc)
            raise

    def invoke(ctx: click.Context) -> Any:
        try:
            return original_invoke(ctx)
        except BaseException as exc:
            _note(cli, exc)
            raise

    cli.main = main  # type: ignore[method-assign]
    cli.make_context = make_context  # type: ignore[method-assign]
    cli.invoke = invoke  # type: ignore[method-assign]
    if isinstance(cli, click.Group):
        _watch_resolution(cli)
    return cli


class _ClickTracker(CommandTracker):
    """A tracker that learns the command from Click's resolution instead of guessing from argv."""

    def __init__(self, telemetry: Telemetry, root: click.Command, args: list[str]) -> None:
        super().__init__(telemetry, [])
        self.root = root
        self.args = args
        self.steps: list[_Step] = []
        self.raised: BaseException | None = None

    def _describe_at_start(self) -> tuple[str, list[str]] | None:
        return None  # known only once Click has parsed

    def _describe(self) -> tuple[str, list[str]]:
        names: list[str] = []
        segments: list[tuple[list[str], click.Command | None, tuple[str, ...]]] = []
        remaining = self.args
        owner: click.Command | None = self.root
        owner_help = _help_names(self.root, None)
        exact = True
        for step in self.steps[:_MAX_PATH]:
            if not _is_suffix(step.args, remaining) or not step.args:
                exact = False
                break
            segments.append((remaining[: len(remaining) - len(step.args)], owner, owner_help))
            owner = step.command
            owner_help = step.help_names
            remaining = step.args[1:]
            name = owner.name if owner is not None else None
            names.append(name if isinstance(name, str) and _NAME_RE.fullmatch(name) else VALUE)
            if owner is None:
                break
        else:
            exact = len(self.steps) <= _MAX_PATH
        if not exact:
            return " ".join(names) or HELP_COMMAND, _sanitize(self.args, None, ())
        segments.append((remaining, owner, owner_help))
        out: list[str] = []
        for tokens, command, help_names in segments:
            if tokens:
                out.extend(_sanitize(tokens, command, help_names))
        if len(out) > MAX_ARGS:
            out = [item for item in out[:MAX_ARGS] if item != TRUNCATED] + [TRUNCATED]
        return " ".join(names) or _root_name(self.root), out

    def _outcome(self, exc: BaseException | None) -> tuple[bool, str | None]:
        raised = self.raised
        if raised is not None and (
            exc is None or exc is raised or isinstance(exc, (SystemExit, click.Abort))
        ):
            exc = raised  # what Click turned into an exit code or re-raised as Abort
        if isinstance(exc, click.exceptions.Exit):
            return (True, None) if exc.exit_code == 0 else (False, "Exit")
        if isinstance(exc, click.Abort):
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (KeyboardInterrupt, EOFError)):
                return False, error_type(cause)
        return super()._outcome(exc)


def _watch_resolution(group: click.Group) -> None:
    """Record which command `group` resolves, and watch the subgroups it hands out."""
    if getattr(group, _STATE_ATTR + "_resolve", False):
        return
    setattr(group, _STATE_ATTR + "_resolve", True)
    original = group.resolve_command

    def resolve_command(
        ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        tracker = current_command()
        if not isinstance(tracker, _ClickTracker):
            return original(ctx, args)
        seen = _texts(args)
        try:
            result = original(ctx, args)
        except BaseException:
            _record_step(tracker, seen, None, ctx)
            raise
        command = result[1]
        _record_step(tracker, seen, command, ctx)
        if isinstance(command, click.Group):
            try:
                _watch_resolution(command)
            except Exception:
                pass
        return result

    group.resolve_command = resolve_command  # type: ignore[method-assign]


def _record_step(
    tracker: _ClickTracker,
    args: list[str],
    command: click.Command | None,
    ctx: click.Context,
) -> None:
    try:
        help_names = _help_names(command, ctx) if command is not None else ()
        tracker.steps.append(_Step(args, command, help_names))
    except Exception:
        pass


def _note(root: click.Command, exc: BaseException) -> None:
    """Keep the exception Click is about to turn into an exit code, for the outcome."""
    tracker = current_command()
    if isinstance(tracker, _ClickTracker) and tracker.root is root:
        tracker.raised = exc


def _completing(complete_var: str | None, prog_name: str | None) -> bool:
    """Whether Click is answering a shell completion request rather than running a command.

    Click's own variable name when it can be worked out (`complete_var`, or
    `_<PROG_NAME>_COMPLETE`); otherwise any variable of that shape counts.
    """
    environ = os.environ
    if not complete_var and prog_name:
        name = prog_name.replace("-", "_").replace(".", "_")
        complete_var = f"_{name}_COMPLETE".upper()
    if complete_var:
        return bool(environ.get(complete_var))
    return any(_COMPLETE_VAR_RE.fullmatch(name) and environ[name] for name in environ)


def _texts(tokens: Sequence[object]) -> list[str]:
    """Plain strings; anything else becomes an empty string, which sanitizes to a placeholder."""
    return [str.__str__(token) if isinstance(token, str) else "" for token in tokens]


def _is_suffix(tail: list[str], whole: list[str]) -> bool:
    return len(tail) <= len(whole) and whole[len(whole) - len(tail) :] == tail


def _help_names(command: click.Command, ctx: click.Context | None) -> tuple[str, ...]:
    """The help option's names for `command`: its own setting, else what its parent context says."""
    own = command.context_settings.get("help_option_names")
    names = own if own is not None else (ctx.help_option_names if ctx is not None else None)
    return tuple(name for name in names or _DEFAULT_HELP if isinstance(name, str))


def _option_table(
    command: click.Command, help_names: tuple[str, ...]
) -> tuple[frozenset[str], frozenset[str]]:
    """Click's own parameter table: (options that take a value, boolean and count flags).

    An option whose value is optional (`is_flag=False` with a `flag_value`)
    is in neither set: whether Click reads the next token depends on what it
    looks like, which the argv-only rules judge the same way.
    """
    values: set[str] = set()
    flags: set[str] = set(help_names)
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        names = [*param.opts, *param.secondary_opts]
        if param.is_flag or param.count:
            flags.update(names)
        elif not getattr(param, "_flag_needs_value", False):
            values.update(names)
    return frozenset(values), frozenset(flags - values)


def _sanitize(
    tokens: list[str], command: click.Command | None, help_names: tuple[str, ...]
) -> list[str]:
    """One level's tokens, read with that command's table (none for an unknown command)."""
    if command is None:
        return sanitize_command(["", "x", *tokens])[1]
    values, flags = _option_table(command, help_names)
    return sanitize_command(["", "x", *tokens], values, flags)[1]


def _root_name(root: click.Command) -> str:
    """The command when no subcommand was resolved: `help` for a group, else its own name."""
    if isinstance(root, click.Group):
        return HELP_COMMAND
    name = root.name
    return name if isinstance(name, str) and _NAME_RE.fullmatch(name) else HELP_COMMAND
