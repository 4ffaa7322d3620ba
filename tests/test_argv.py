"""argv sanitization: the spec's example exactly, and no raw value through any spelling."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import SPEC_ARGV
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_middleware.argv import (
    MAX_ARG_CHARS,
    MAX_ARGS,
    PATH,
    REDACTED,
    TRUNCATED,
    VALUE,
    error_type,
    sanitize_command,
)

# Every item sanitize_command may emit: a placeholder, the marker, "--", or an ASCII option name
# with at most an attached placeholder.
_ITEM_SHAPE = re.compile(
    r"<path>|<value>|<redacted>|<truncated>|--"
    r"|--?[A-Za-z0-9][A-Za-z0-9_-]{0,38}(?:=<(?:path|value|redacted)>)?"
)
_COMMAND_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def secret(n: int) -> str:
    """A distinctive string that must never show up in any output."""
    return f"S3cr3t-XYZZY-{n}"


def run_args(*args: Any, **tables: Any) -> list[str]:
    """Sanitized args of `tool run ARGS...`, checking the command and item types on the way."""
    command, out = sanitize_command(["tool", "run", *args], **tables)
    assert command == "run"
    assert all(type(item) is str for item in out)
    return out


class _Sneaky(str):
    """A str subclass that claims to equal everything, e.g. "--"."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def test_spec_example_exactly() -> None:
    assert sanitize_command(SPEC_ARGV) == (
        "run",
        ["--dag-filter", VALUE, "--threads", VALUE, "--output-dir", PATH],
    )


LEAK_CASES = [
    pytest.param([f"--flag={secret(1)}"], ["--flag=<value>"], secret(1), id="long-eq"),
    pytest.param(["--flag", secret(2)], ["--flag", VALUE], secret(2), id="long-space"),
    pytest.param([f"-f{secret(3)}"], ["-f", VALUE], secret(3), id="short-attached"),
    pytest.param(["-f", secret(4)], ["-f", VALUE], secret(4), id="short-space"),
    pytest.param([f"-p/tmp/{secret(5)}"], ["-p", PATH], secret(5), id="short-attached-path"),
    pytest.param([f"-n{secret(6)}.yml"], ["-n", PATH], secret(6), id="short-attached-file"),
    pytest.param(
        ["--tag", f"{secret(7)}a", "--tag", f"{secret(7)}b", f"--tag={secret(7)}c"],
        ["--tag", VALUE, "--tag", VALUE, "--tag=<value>"],
        secret(7),
        id="repeated-flag",
    ),
    pytest.param(
        ["--", secret(8), f"-{secret(8)}", f"--{secret(8)}", f"--{secret(8)}=x", "--", "-v"],
        ["--", VALUE, VALUE, VALUE, VALUE, VALUE, VALUE],
        secret(8),
        id="after-double-dash",
    ),
    pytest.param(
        ["--", f"./{secret(9)}", f"--x/{secret(9)}"],
        ["--", PATH, PATH],
        secret(9),
        id="paths-after-double-dash",
    ),
    pytest.param(
        ["--never-heard-of", secret(10)], ["--never-heard-of", VALUE], secret(10), id="unknown"
    ),
    pytest.param([secret(11)], [VALUE], secret(11), id="positional"),
    pytest.param(["--out", f"/home/{secret(12)}/x"], ["--out", PATH], secret(12), id="abs-path"),
    pytest.param([f"-{secret(13)}"], ["-S", VALUE], secret(13), id="short-cluster"),
    pytest.param(
        ["--offset", f"-{secret(14)}"], ["--offset", "-S", VALUE], secret(14), id="dash-value"
    ),
    pytest.param([f"-5{secret(15)}"], [VALUE], secret(15), id="digit-after-dash"),
    pytest.param([f"--bad flag {secret(16)}"], [VALUE], secret(16), id="long-with-space"),
    pytest.param(["--" + "a" * 39 + secret(17)], [VALUE], secret(17), id="long-too-long"),
    pytest.param([f"--naïve-{secret(18)}"], [VALUE], secret(18), id="long-non-ascii"),
    pytest.param(
        [f"--flag=ünï-{secret(19)}"], ["--flag=<value>"], secret(19), id="eq-non-ascii-value"
    ),
    pytest.param([secret(20) * 100], [VALUE], secret(20), id="very-long"),
    pytest.param([f"--fl\x00ag={secret(21)}"], [VALUE], secret(21), id="nul-in-name"),
    pytest.param([f"{secret(22)}\x00"], [VALUE], secret(22), id="nul-in-value"),
    pytest.param(
        ["\udcff" + secret(23), f"--flag=\udcff{secret(23)}"],
        [VALUE, "--flag=<value>"],
        secret(23),
        id="surrogates",
    ),
    pytest.param(["", secret(24)], [VALUE, VALUE], secret(24), id="empty-string"),
    pytest.param(["-", secret(25)], [VALUE, VALUE], secret(25), id="stdin-dash"),
    pytest.param(["--token", secret(26)], ["--token", REDACTED], secret(26), id="token-space"),
    pytest.param([f"--token={secret(27)}"], ["--token=<redacted>"], secret(27), id="token-eq"),
    pytest.param(
        ["--password", f"/etc/{secret(28)}"],
        ["--password", REDACTED],
        secret(28),
        id="password-path",
    ),
    pytest.param(
        ["--token", f"-{secret(29)}"], ["--token", REDACTED], secret(29), id="token-dash-value"
    ),
    pytest.param(["--token="], ["--token=<redacted>"], secret(30), id="token-eq-empty"),
    pytest.param(
        ["-password", secret(31)], ["-p", VALUE, REDACTED], secret(31), id="single-dash-word"
    ),
    pytest.param(
        ["--token", "--verbose", secret(32)],
        ["--token", "--verbose", VALUE],
        secret(32),
        id="flag-after-sensitive-flag",
    ),
    pytest.param(
        ["--config", f"C:\\Users\\{secret(33)}\\x.yml"],
        ["--config", PATH],
        secret(33),
        id="windows-path",
    ),
    pytest.param([f"-t={secret(34)}"], ["-t", VALUE], secret(34), id="short-eq"),
    pytest.param([f"--flag=a={secret(35)}"], ["--flag=<value>"], secret(35), id="eq-twice"),
    pytest.param(
        [None, 42, secret(36).encode()], [VALUE, VALUE, VALUE], secret(36), id="non-str-items"
    ),
    pytest.param([_Sneaky(secret(37))], [VALUE], secret(37), id="str-subclass"),
    pytest.param(
        ["--api-key", secret(38), "--threads", "4"],
        ["--api-key", REDACTED, "--threads", VALUE],
        secret(38),
        id="redaction-does-not-spread",
    ),
]


@pytest.mark.parametrize(("args", "expected", "hidden"), LEAK_CASES)
def test_no_raw_value_leaks(args: list[Any], expected: list[str], hidden: str) -> None:
    result = sanitize_command(["tool", "run", *args])
    assert result == ("run", expected)
    assert hidden not in repr(result)
    assert hidden not in json.dumps(result, ensure_ascii=False)


SENSITIVE_FLAGS = [
    "--token",
    "--api-key",
    "--apikey",
    "--API_KEY",
    "--db-password",
    "--passwd",
    "--pwd",
    "--pass",
    "--passphrase",
    "--client-secret",
    "--private-key",
    "--keyfile",
    "--auth",
    "--oauth",
    "--authorization",
    "--credentials",
    "--cookie",
    "--session-id",
    "--cert",
    "--github-token",
]


@pytest.mark.parametrize("flag", SENSITIVE_FLAGS)
def test_sensitive_flag_values_are_redacted(flag: str) -> None:
    assert run_args(flag, secret(100)) == [flag, REDACTED]
    assert run_args(f"{flag}={secret(100)}") == [f"{flag}={REDACTED}"]
    # Even a value that looks like a path is a secret here.
    assert run_args(flag, "/home/user/.ssh/id_rsa") == [flag, REDACTED]


@pytest.mark.parametrize("flag", ["--threads", "--output-dir", "--dag-filter", "--name", "-t"])
def test_ordinary_flag_values_are_not_redacted(flag: str) -> None:
    assert run_args(flag, "4") == [flag, VALUE]
    assert run_args(flag, "out/dir") == [flag, PATH]


def test_sensitive_value_in_exact_mode_is_redacted_even_when_it_starts_with_dash() -> None:
    assert run_args("--token", "-v", value_options={"--token"}) == ["--token", REDACTED]
    assert run_args("--token", "-v") == ["--token", "-v"]  # argv alone: -v is a flag


PATH_FORMS = [
    "/abs",
    "/",
    "~",
    "~/x",
    "~user",
    "./x",
    "../x",
    ".",
    "..",
    "C:\\x",
    "C:/x",
    "C:",
    "\\\\srv\\share",
    "dir/file",
    "x.yml",
    "data.csv",
    "archive.tar.gz",
    ".env",
    "https://example.com/a",
]


@pytest.mark.parametrize("value", PATH_FORMS)
def test_path_forms(value: str) -> None:
    assert run_args(value) == [PATH]
    assert run_args("--in", value) == ["--in", PATH]
    assert run_args(f"--in={value}") == [f"--in={PATH}"]


VALUE_FORMS = ["4", "0", "3.14", "1.2.3", "+my_chart+", "hello", "my_model", "a:b", "x.", "tag:v1"]


@pytest.mark.parametrize("value", VALUE_FORMS)
def test_value_forms(value: str) -> None:
    assert run_args(value) == [VALUE]
    assert run_args("--in", value) == ["--in", VALUE]


@pytest.mark.parametrize("value", ["-5", "-1.5", "-", "-.", "--5", "---x"])
def test_dash_values_are_not_flags(value: str) -> None:
    assert run_args(value) == [VALUE]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ("help", [])),
        (["visivo"], ("help", [])),
        (["visivo", "--version"], ("help", ["--version"])),
        (["visivo", "--verbose", "run", "x"], ("help", ["--verbose", VALUE, VALUE])),
        (["visivo", "-", "x"], ("help", [VALUE, VALUE])),
        (["visivo", "-5"], ("help", [VALUE])),
        (["visivo", "run"], ("run", [])),
        (["visivo", "Run"], ("Run", [])),
        (["visivo", "dbt-run_2"], ("dbt-run_2", [])),
        (["visivo", "compile", "my_project"], ("compile", [VALUE])),
        (["visivo", "./project.yml", "--x"], (PATH, ["--x"])),
        (["visivo", "project.visivo.yml"], (PATH, [])),
        (["visivo", "/home/alice/proj", "4"], (PATH, [VALUE])),
        (["visivo", "hello world"], (VALUE, [])),
        (["visivo", "9lives"], (VALUE, [])),
        (["visivo", "rün"], (VALUE, [])),
        (["visivo", ""], (VALUE, [])),
        (["visivo", None], (VALUE, [])),
        (["visivo", "a" * 32], ("a" * 32, [])),
        (["visivo", "a" * 33], (VALUE, [])),
        (["visivo", "a" * 1000], (VALUE, [])),
        (["visivo", "x/" * 500], (PATH, [])),
    ],
)
def test_command_rules(argv: list[Any], expected: tuple[str, list[str]]) -> None:
    assert sanitize_command(argv) == expected


class _ExplodingSequence(Sequence[str]):
    """A sequence that fails as soon as it is read."""

    def __getitem__(self, index: Any) -> Any:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "argv", [None, 42, "visivo run --token x", b"visivo run", object(), _ExplodingSequence()]
)
def test_unreadable_argv_gives_a_placeholder_command(argv: Any) -> None:
    assert sanitize_command(argv) == (VALUE, [])


def test_iterables_are_read_lazily_and_bounded() -> None:
    once: Any = iter(["visivo", "run", "--x", "1"])
    assert sanitize_command(once) == ("run", ["--x", VALUE])
    endless: Any = itertools.repeat("run")
    assert sanitize_command(endless) == ("run", [VALUE] * MAX_ARGS + [TRUNCATED])


EXACT_CASES = [
    pytest.param(["--pattern", "-x"], ["--pattern", VALUE], ["--pattern", "-x"], id="dash-value"),
    pytest.param(["--offset", "-5"], ["--offset", VALUE], ["--offset", VALUE], id="negative"),
    pytest.param(["-t4"], ["-t", VALUE], ["-t", VALUE], id="attached"),
    pytest.param(["-t", "./x"], ["-t", PATH], ["-t", PATH], id="short-space"),
    pytest.param(["-vq"], ["-v", "-q"], ["-v", VALUE], id="bool-cluster"),
    pytest.param(["-vt4"], ["-v", "-t", VALUE], ["-v", VALUE], id="cluster-then-value"),
    pytest.param(["-vt", "4"], ["-v", "-t", VALUE], ["-v", VALUE, VALUE], id="cluster-space"),
    pytest.param(["-vt", "-S"], ["-v", "-t", VALUE], ["-v", VALUE, "-S"], id="cluster-dash"),
    pytest.param(["-vxS"], ["-v", "-x", VALUE], ["-v", VALUE], id="cluster-unknown"),
    pytest.param(["-v5"], ["-v", VALUE], ["-v", VALUE], id="cluster-digit"),
    pytest.param(["-v/a"], ["-v", PATH], ["-v", PATH], id="cluster-path"),
    pytest.param(["-1"], ["-1"], [VALUE], id="digit-option"),
    pytest.param(
        ["--threads", "--", "-v"], ["--threads", VALUE, "-v"], ["--threads", "--", VALUE], id="dd"
    ),
    pytest.param(["--verbose", "x"], ["--verbose", VALUE], ["--verbose", VALUE], id="bool"),
    pytest.param(["--no-auth", "x"], ["--no-auth", VALUE], ["--no-auth", REDACTED], id="bool-s"),
    pytest.param(["-t=4"], ["-t=<value>"], ["-t", VALUE], id="short-eq-known"),
    pytest.param(["--threads=4"], ["--threads=<value>"], ["--threads=<value>"], id="long-eq"),
    pytest.param(["--verbose=x"], ["--verbose=<value>"], ["--verbose=<value>"], id="bool-eq"),
    # With a table, a long name the tool does not know is typed text, not one of its flags.
    pytest.param(["--bogus", "x"], [VALUE, VALUE], ["--bogus", VALUE], id="unknown"),
    pytest.param(["-name", "x"], ["-name", VALUE], ["-n", VALUE, VALUE], id="single-dash-long"),
    pytest.param(["--threads"], ["--threads"], ["--threads"], id="missing-value"),
]
VALUE_OPTIONS = {"--pattern", "--offset", "-t", "--threads", "--token", "-name"}
FLAG_OPTIONS = {"-v", "-q", "-1", "--verbose", "--no-auth"}


@pytest.mark.parametrize(("args", "exact", "argv_only"), EXACT_CASES)
def test_option_table_makes_output_exact(
    args: list[str], exact: list[str], argv_only: list[str]
) -> None:
    assert run_args(*args, value_options=VALUE_OPTIONS, flag_options=FLAG_OPTIONS) == exact
    assert run_args(*args) == argv_only


def test_either_table_alone_is_enough() -> None:
    assert run_args("--pattern", "-x", value_options={"--pattern"}) == ["--pattern", VALUE]
    assert run_args("-vq", flag_options={"-v", "-q"}) == ["-v", "-q"]


def test_malformed_tables_are_ignored_not_fatal() -> None:
    junk: Any = ["not an option", 5, None, "--ok", "--", "--naïve", "-"]
    assert run_args("--ok", "-x", "--", "-v", value_options=junk, flag_options="--verbose") == [
        "--ok",
        VALUE,
        "--",
        VALUE,
    ]
    assert run_args("--verbose", "x", flag_options="--verbose") == ["--verbose", VALUE]
    # A junk entry is never echoed even when a token equals it.
    assert run_args("--naïve", "x", value_options=junk) == [VALUE, VALUE]
    exploding: Any = _ExplodingSequence()
    assert run_args("-vq", value_options=exploding, flag_options=exploding) == ["-v", VALUE]


def test_truncation_cap() -> None:
    assert run_args(*["x"] * MAX_ARGS) == [VALUE] * MAX_ARGS
    assert run_args(*["x"] * (MAX_ARGS + 1)) == [VALUE] * MAX_ARGS + [TRUNCATED]
    assert run_args(*["x"] * 10_000) == [VALUE] * MAX_ARGS + [TRUNCATED]
    assert run_args(*["--flag"] * 100) == ["--flag"] * MAX_ARGS + [TRUNCATED]
    # One token can expand to many items; the cap still holds.
    assert run_args("-" + "v" * 10_000, flag_options={"-v"}) == ["-v"] * MAX_ARGS + [TRUNCATED]
    assert sanitize_command(["visivo", *["--x"] * 100])[1] == ["--x"] * MAX_ARGS + [TRUNCATED]


def test_flag_length_bound() -> None:
    longest = "--" + "a" * 38
    assert run_args(longest) == [longest]
    assert run_args(longest + "a") == [VALUE]
    sensitive = "--" + "a" * 33 + "token"
    assert run_args(f"{sensitive}=x") == [f"{sensitive}=<redacted>"]
    assert len(f"{sensitive}=<redacted>") == MAX_ARG_CHARS


def test_unknown_flag_looking_tokens_are_kept_by_name() -> None:
    # By design: a token shaped like a flag name is reported as a flag, even an unknown one.
    assert run_args("--S3cr3t-looking-flag") == ["--S3cr3t-looking-flag"]


_FLAGS = ["--threads", "--output-dir", "--dag-filter", "--token", "--api-key", "--verbose"]
_SHORTS = ["-v", "-t", "-x", "-a"]
_TABLES: dict[str, Any] = {
    "value_options": {"--threads", "--output-dir", "--dag-filter", "--token", "--api-key", "-t"},
    "flag_options": {"--verbose", "-v", "-x"},
}


@st.composite
def argv_with_secrets(draw: st.DrawFn) -> tuple[list[str], list[str], bool]:
    """`tool run ...` with secrets in every value position; flag names never contain one."""
    secrets: list[str] = []

    def new_secret() -> str:
        value = "SECRET" + draw(st.text(max_size=12))
        secrets.append(value)
        return value

    argv = ["tool", "run"]
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["flag", "eq", "short", "short-eq", "bare", "flag-value"]))
        flag = draw(st.sampled_from(_FLAGS + _SHORTS))
        if kind == "flag":
            argv.append(flag)
        elif kind == "eq":
            argv.append(f"{flag}={new_secret()}")
        elif kind == "short":
            argv.append(draw(st.sampled_from(_SHORTS)) + new_secret())
        elif kind == "short-eq":
            argv.append(draw(st.sampled_from(_SHORTS)) + "=" + new_secret())
        elif kind == "bare":
            argv.append(new_secret())
        else:
            argv += [flag, draw(st.sampled_from(["", "-", "/", "~/"])) + new_secret()]
    if draw(st.booleans()):
        argv.append("--")
        for _ in range(draw(st.integers(0, 6))):
            argv.append(draw(st.sampled_from(["", "-", "--", "---"])) + new_secret())
    return argv, secrets, draw(st.booleans())


def assert_well_formed(command: str, args: list[str]) -> None:
    assert type(command) is str
    assert command in {"help", PATH, VALUE} or _COMMAND_SHAPE.fullmatch(command)
    assert len(args) <= MAX_ARGS + 1
    assert TRUNCATED not in args[:-1]
    for item in args:
        assert type(item) is str
        assert len(item) <= MAX_ARG_CHARS
        assert _ITEM_SHAPE.fullmatch(item), item


@settings(max_examples=300, deadline=None)
@given(argv_with_secrets())
def test_property_no_secret_survives(case: tuple[list[str], list[str], bool]) -> None:
    argv, secrets, with_tables = case
    command, args = sanitize_command(argv, **(_TABLES if with_tables else {}))
    assert command == "run"
    assert_well_formed(command, args)
    dumped = json.dumps([command, args], ensure_ascii=False)
    for hidden in secrets:
        assert hidden not in dumped
        assert all(hidden not in item for item in args)


_ANY_ITEM = st.one_of(
    st.text(),
    st.text(alphabet="-=abcvtx/.~\\ 0123456789", max_size=8),
    st.sampled_from(["--", "-", "", "--token", "-vt", "--threads"]),
    st.none(),
    st.integers(),
    st.binary(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_ANY_ITEM, max_size=80),
    st.none() | st.lists(st.one_of(st.text(max_size=6), st.sampled_from(["-v", "-t", "--x"]))),
    st.none() | st.lists(st.one_of(st.text(max_size=6), st.sampled_from(["-v", "-q", "--y"]))),
)
def test_property_never_raises_and_output_is_bounded(
    argv: list[Any], values: list[str] | None, flags: list[str] | None
) -> None:
    command, args = sanitize_command(argv, values, flags)
    assert_well_formed(command, args)
    if command not in {"help", PATH, VALUE}:
        assert command == argv[1]
    # Nothing is invented: every kept option name was typed by the user.
    typed = "".join(item for item in argv[1:] if isinstance(item, str))
    for item in args:
        if item.startswith("-") and item != "--":
            name = item.partition("=")[0]
            assert (name[1:] if len(name) == 2 else name) in typed


@given(st.lists(st.text()))
def test_property_plain_text_lists(argv: list[str]) -> None:
    command, args = sanitize_command(argv)
    assert_well_formed(command, args)
    # A non-dash argument is never echoed as an argument.
    for token in argv[2:]:
        if token and not token.startswith("-"):
            assert token not in args or token in {PATH, VALUE, REDACTED, TRUNCATED}


class _Meta(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("no name")


class _Nameless(Exception, metaclass=_Meta):
    pass


class _NotAStrMeta(type):
    @property
    def __name__(cls) -> Any:  # type: ignore[override]
        return 42


class _OddName(Exception, metaclass=_NotAStrMeta):
    pass


class MyToolError(Exception):
    pass


def _exception_named(name: str) -> BaseException:
    cls: type[Exception] = type(name, (Exception,), {})
    return cls()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (None, None),
        (ValueError("/home/alice/secret.txt not found"), "ValueError"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (MyToolError(), "MyToolError"),
        (_exception_named("A" * 64), "A" * 64),
        (_exception_named("A" * 65), "Exception"),
        (_exception_named("user@example.com leaked"), "Exception"),
        (_exception_named("Ошибка"), "Exception"),
        (_exception_named("Bad\nName"), "Exception"),
        (_exception_named(""), "Exception"),
        (_Nameless(), "Exception"),
        (_OddName(), "Exception"),
    ],
)
def test_error_type(exc: BaseException | None, expected: str | None) -> None:
    assert error_type(exc) == expected
