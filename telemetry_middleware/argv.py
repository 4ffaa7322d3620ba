"""Reduce a CLI's argv to its shape: the command name, flag names and placeholders.

Privacy is the product: no raw argument value ever leaves this module. Every token that is not a
plausible command or flag name becomes ``<path>``, ``<value>`` or ``<redacted>``, and the output is
bounded. Stdlib only, so the Click integration and plain ``sys.argv`` callers share one set of
rules; an optional option table makes the output more exact, never leakier.

Rules (argv as in ``sys.argv``; the program name is dropped):

- Command: the first argument if it matches ``[A-Za-z][A-Za-z0-9_-]{0,31}`` (kept as typed, since
  Click command names are case-sensitive). No arguments, or a first argument starting with ``-``:
  ``"help"``, and every argument is sanitized. Anything else: its ``<path>``/``<value>``
  placeholder, never the text.
- Flags are kept by name only when they look like one: ``--name`` (letter first, then letters,
  digits, ``-``, ``_``; at most 40 characters) or ``-x`` (one ASCII letter). Any other token
  starting with ``-`` (``-5``, ``-``, ``--naïve``, ``--a b``) becomes ``<value>``.
- Every other token is a value: ``<path>`` when it looks like one (see ``_classify``), otherwise
  ``<value>``; ``<redacted>`` when it is the value of a sensitive flag (see ``_SENSITIVE_WORDS``).
- ``--name=value`` keeps ``--name=`` plus the placeholder. ``-xREST`` (argv alone cannot tell a
  cluster of booleans from an attached value) becomes ``-x`` followed by the placeholder of REST.
- A bare ``--`` is kept and ends option parsing: every later token is a ``<path>``/``<value>``.
- The token after a sensitive flag not in the option table is ``<redacted>`` unless it is itself a
  well-formed flag or ``--`` (so ``--token -S3cret`` does not keep ``-S``).
- With an option table (``value_options``/``flag_options``, e.g. from Click): the token after a
  value option is its value whatever it looks like (``--offset -5``); a single-dash token is read
  like Click reads it, one known option letter at a time, each kept as its own ``-x`` (``-vq`` ->
  ``-v``, ``-q``); ``-tREST`` with ``-t`` a value option is ``-t`` plus a placeholder. Options not
  in the table fall back to the argv-only rules above.
- At most ``MAX_ARGS`` (64) items are returned; when more would be, the first 64 are followed by
  the single marker ``"<truncated>"``. Each item is at most ``MAX_ARG_CHARS`` (51) characters.
- Never raises: non-``str`` items are ``<value>``; input that cannot be read at all gives
  ``("<value>", [])``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Sequence
from itertools import islice
from typing import Final

__all__ = [
    "HELP_COMMAND",
    "MAX_ARGS",
    "MAX_ARG_CHARS",
    "MAX_FLAG_CHARS",
    "PATH",
    "REDACTED",
    "TRUNCATED",
    "VALUE",
    "error_type",
    "sanitize_command",
]

PATH: Final = "<path>"
VALUE: Final = "<value>"
REDACTED: Final = "<redacted>"
TRUNCATED: Final = "<truncated>"
HELP_COMMAND: Final = "help"

MAX_ARGS: Final = 64
MAX_FLAG_CHARS: Final = 40
# The longest item is a maximal flag with an attached sensitive value: "--name=<redacted>".
MAX_ARG_CHARS: Final = MAX_FLAG_CHARS + len("=") + len(REDACTED)
_MAX_IDENTIFIER_CHARS: Final = 64

# Explicit ASCII ranges, no IGNORECASE: with it, "[a-z]" would also match "ſ" and the Kelvin sign.
_COMMAND_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_LONG_FLAG_RE: Final = re.compile(r"--[A-Za-z][A-Za-z0-9_-]{0,37}")  # at most MAX_FLAG_CHARS
_SHORT_FLAG_RE: Final = re.compile(r"-[A-Za-z]")
# Names from an option table are code, yet they are still checked before they are echoed.
_KNOWN_OPTION_RE: Final = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_-]{0,37}")
_DRIVE_RE: Final = re.compile(r"[A-Za-z]:")
_EXTENSION_RE: Final = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}")

# Matched as substrings of the lowercased name with "-" and "_" removed, so "--API_KEY",
# "--private-key", "--keyfile", "--oauth" and "--passphrase" all count. Over-matching ("--bypass",
# "--author") only turns a <value> into <redacted>; under-matching could cost a secret.
_SENSITIVE_WORDS: Final = (
    "token",
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "key",
    "auth",
    "credential",
    "cookie",
    "session",
    "cert",
    "private",
    "bearer",
    "jwt",
)


class _Next(enum.Enum):
    """What the previous token says about how to read the next one."""

    FREE = enum.auto()  # read it on its own
    VALUE = enum.auto()  # value of a known value option, whatever it looks like
    SECRET = enum.auto()  # value of a known sensitive value option
    MAYBE_SECRET = enum.auto()  # follows a sensitive flag that may or may not take a value
    POSITIONAL = enum.auto()  # after a bare "--": values only


def sanitize_command(
    argv: Sequence[str],
    value_options: Collection[str] | None = None,
    flag_options: Collection[str] | None = None,
) -> tuple[str, list[str]]:
    """argv as in sys.argv (program name first). Returns (command, sanitized_args).

    ``value_options``/``flag_options`` are the option names (``--threads``, ``-t``) that take a
    value and that are boolean flags; given either, tokens are read as Click would read them.
    """
    try:
        items = _head(argv)
        if items is None:
            return VALUE, []
        if len(items) < 2:
            return HELP_COMMAND, []
        sanitizer = _Sanitizer(_option_names(value_options), _option_names(flag_options))
        first = _as_text(items[1])
        if first is not None and first.startswith("-"):
            return HELP_COMMAND, sanitizer.run(items[1:])
        if first is None or not _COMMAND_RE.fullmatch(first):
            return _classify(first), sanitizer.run(items[2:])
        return first, sanitizer.run(items[2:])
    except Exception:
        # Unreachable for any input we know of; telemetry must still never break the CLI.
        return VALUE, []


def error_type(exc: BaseException | None) -> str | None:
    """The exception's class name: code, not user data, unless a class was built from input."""
    if exc is None:
        return None
    try:
        name: object = type(exc).__name__
        if isinstance(name, str):
            name = str.__str__(name)  # a str subclass could override the checks below
            if len(name) <= _MAX_IDENTIFIER_CHARS and name.isascii() and name.isidentifier():
                return name
    except Exception:
        pass
    return "Exception"


class _Sanitizer:
    """One pass over the arguments after the command, with the option table (possibly empty)."""

    __slots__ = ("_flags", "_out", "_values")

    def __init__(self, values: frozenset[str], flags: frozenset[str]) -> None:
        self._values = values
        self._flags = flags
        self._out: list[str] = []

    def run(self, args: Sequence[object]) -> list[str]:
        """Every token adds at least one item, so stopping past MAX_ARGS bounds the work."""
        out = self._out
        expect = _Next.FREE
        for raw in args:
            if len(out) > MAX_ARGS:
                break
            token = _as_text(raw)
            if expect is _Next.POSITIONAL:
                out.append(_classify(token))
            elif expect is _Next.SECRET:
                out.append(REDACTED)
                expect = _Next.FREE
            elif expect is _Next.VALUE:
                out.append(_classify(token))
                expect = _Next.FREE
            elif expect is _Next.MAYBE_SECRET and not self._is_flag(token):
                out.append(REDACTED)
                expect = _Next.FREE
            else:
                expect = self._token(token)
        if len(out) > MAX_ARGS:
            del out[MAX_ARGS:]
            out.append(TRUNCATED)
        return out

    def _is_flag(self, token: str | None) -> bool:
        """Whether a token after a sensitive flag is plainly a flag rather than its value."""
        if token is None:
            return False
        name = token.partition("=")[0]
        return (
            token == "--"
            or name in self._values
            or name in self._flags
            or _LONG_FLAG_RE.fullmatch(name) is not None
            or _SHORT_FLAG_RE.fullmatch(token) is not None
        )

    def _token(self, token: str | None) -> _Next:
        out = self._out
        if token is None:
            out.append(VALUE)
            return _Next.FREE
        if token == "--":
            out.append(token)
            return _Next.POSITIONAL
        if len(token) < 2 or not token.startswith("-"):
            out.append(_classify(token))
            return _Next.FREE
        # Like Click: the whole name (up to "=") is looked up before reading it as a cluster.
        name, eq, attached = token.partition("=")
        if name in self._values or name in self._flags:
            return self._option(name, eq, attached)
        if token.startswith("--"):
            # With the tool's option table, a long name it does not know is not one of its
            # flags: it is typed text (a value after `--` consumed as an option's value, a
            # typo), so it is not kept. Without a table, well-formed names are kept.
            if not (self._values or self._flags) and _LONG_FLAG_RE.fullmatch(name):
                return self._option(name, eq, attached)
            out.append(VALUE)
            return _Next.MAYBE_SECRET if not eq and _is_sensitive(name) else _Next.FREE
        return self._short(token)

    def _option(self, name: str, eq: str, attached: str) -> _Next:
        """A well-formed or known option name, with or without an attached value."""
        sensitive = _is_sensitive(name)
        if eq:
            self._out.append(f"{name}={REDACTED if sensitive else _classify(attached)}")
            return _Next.FREE
        self._out.append(name)
        if name in self._values:
            return _Next.SECRET if sensitive else _Next.VALUE
        if name in self._flags or not sensitive:
            return _Next.FREE
        return _Next.MAYBE_SECRET

    def _short(self, token: str) -> _Next:
        """A single-dash token: known letters one at a time, then "-x" plus a placeholder."""
        out = self._out
        body = token[1:]
        for index, char in enumerate(body):
            if len(out) > MAX_ARGS:
                break
            option = "-" + char
            rest = body[index + 1 :]
            if option in self._flags:
                out.append(option)
                continue
            if option in self._values:
                out.append(option)
                if rest:
                    out.append(_classify(rest))
                    return _Next.FREE
                return _Next.VALUE
            if not _SHORT_FLAG_RE.fullmatch(option):
                # "-5", "-.": a value, not a flag; "-v5" with -v known: the value part.
                out.append(VALUE if index == 0 else _classify(body[index:]))
                return _Next.FREE
            out.append(option)
            if rest:
                out.append(_classify(rest))
            # "-password hunter2": single-dash long names exist; treat the word like a flag name.
            return _Next.MAYBE_SECRET if _is_sensitive(body[index:]) else _Next.FREE
        return _Next.FREE


def _head(argv: object) -> list[object] | None:
    """Enough leading items to fill MAX_ARGS, so a huge or endless argv costs nothing extra."""
    if isinstance(argv, (str, bytes, bytearray)) or not isinstance(argv, Iterable):
        return None
    # Program, command, then MAX_ARGS + 1 arguments: enough to know whether to truncate.
    return list(islice(argv, MAX_ARGS + 3))


def _option_names(options: object) -> frozenset[str]:
    """The option table as plain, well-formed names; anything unreadable means no table."""
    if isinstance(options, str):
        options = (options,)
    if not isinstance(options, Iterable):
        return frozenset()
    try:
        names = (str.__str__(name) for name in options if isinstance(name, str))
        return frozenset(name for name in names if _KNOWN_OPTION_RE.fullmatch(name))
    except Exception:
        return frozenset()


def _as_text(item: object) -> str | None:
    """A plain str copy (a subclass could override comparisons), or None for anything else."""
    return str.__str__(item) if isinstance(item, str) else None


def _classify(value: str | None) -> str:
    """<path> for anything that looks like a file system path, else <value>; never the value."""
    if not value:
        return VALUE
    if "/" in value or "\\" in value:  # absolute, relative, ~/x, C:\x, C:/x, \\server\share, URLs
        return PATH
    if value in (".", "..") or value.startswith("~") or _DRIVE_RE.fullmatch(value):
        return PATH
    dot = value.rfind(".")
    if dot >= 0 and _EXTENSION_RE.fullmatch(value, dot):  # x.yml, data.csv, .env
        return PATH
    return VALUE


def _is_sensitive(name: str) -> bool:
    """Whether a flag name suggests its value is a secret (see _SENSITIVE_WORDS)."""
    folded = name.lower().replace("-", "").replace("_", "")
    return any(word in folded for word in _SENSITIVE_WORDS)
