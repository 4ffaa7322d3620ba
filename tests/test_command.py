"""CLI command telemetry: `track_command` end to end, leak checks, outcomes, opt-out, Click."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from conftest import COMMON_KEYS, PYTHON, SPEC_ARGV, shared_telemetry, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_middleware import Telemetry
from telemetry_middleware.argv import PATH, REDACTED, VALUE
from telemetry_middleware.capture_server import CaptureServer, decode_body, events_of
from telemetry_middleware.command import CommandTracker, current_command, track
from telemetry_middleware.identity import project_hash

SPEC_ARGS = ["--dag-filter", VALUE, "--threads", VALUE, "--output-dir", PATH]

CLI_KEYS = {"command", "command_args", "duration_ms", "success"}
PROJECT_HASH = project_hash("visivo", "my-project")


# -- helpers --


class Endpoint:
    """A Telemetry sending to a capture endpoint, seen from the moment this view was made."""

    def __init__(self, telemetry: Telemetry, capture: CaptureServer) -> None:
        self.telemetry = telemetry
        self.capture = capture
        self.start = len(capture.bodies)

    def events(self, name: str = "cli_command") -> list[dict[str, Any]]:
        """Flush, then the events called `name` that arrived since this view was made."""
        assert self.telemetry.flush(5.0)
        found = []
        for raw in self.capture.bodies[self.start :]:
            found += [e for e in events_of(decode_body(raw, "", "", "")) if e["event"] == name]
        return found

    def one(self) -> dict[str, Any]:
        """The properties of the single `cli_command` event that arrived."""
        events = self.events()
        assert len(events) == 1, events
        props: dict[str, Any] = events[0]["properties"]
        return props

    def assert_nowhere(self, *secrets: str) -> None:
        """No secret in any body the endpoint ever received (new bodies must exist)."""
        assert self.telemetry.flush(5.0)
        assert len(self.capture.bodies) > self.start, "nothing arrived: the check proves nothing"
        assert_nowhere(self.capture, *secrets)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One endpoint and one Telemetry for the many cases that only read their own events.

    (A capture server takes half a second to stop; one per case would double the run time.)
    The environment is passed explicitly, so no fixture has to patch `os.environ`.
    """
    home = tmp_path_factory.mktemp("shared-home")
    with shared_telemetry(home) as (telemetry, capture):
        yield Endpoint(telemetry, capture)


@pytest.fixture
def ep(shared: Endpoint) -> Endpoint:
    return Endpoint(shared.telemetry, shared.capture)


def everything_received(capture: CaptureServer) -> str:
    """Every raw body, plus every decoded body with non-ASCII kept (JSON escapes hide it)."""
    parts = []
    for raw in list(capture.bodies):
        parts.append(raw.decode("utf-8", "replace"))
        payload = decode_body(raw, "", "", "application/json")
        parts.append(json.dumps(payload, ensure_ascii=False))
    return "\n".join(parts)


def assert_nowhere(capture: CaptureServer, *secrets: str) -> None:
    assert capture.bodies, "nothing reached the endpoint: the check would prove nothing"
    text = everything_received(capture)
    folded = text.lower()
    for hidden in secrets:
        assert hidden not in text, hidden
        assert hidden.lower() not in folded, hidden


@dataclass
class Recorder:
    """An enabled Telemetry whose `_record` keeps the properties instead of delivering them."""

    telemetry: Telemetry
    calls: list[dict[str, Any]]


@pytest.fixture
def rec(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    telemetry = Telemetry(
        "visivo", "1.4.0", project_dir=home, api_key="phc_test", host="http://127.0.0.1:9"
    )
    recorder = Recorder(telemetry, [])

    def record(event: str, properties: dict[str, Any]) -> None:
        assert event == "cli_command"
        recorder.calls.append(properties)

    monkeypatch.setattr(telemetry, "_record", record)
    yield recorder
    telemetry.shutdown(0.1)


# -- the spec's example and the exact event shape --


def test_spec_example_through_the_capture_endpoint(ep: Endpoint) -> None:
    with ep.telemetry.track_command(SPEC_ARGV):
        pass
    props = ep.one()
    assert props["command"] == "run"
    assert props["command_args"] == SPEC_ARGS
    ep.assert_nowhere("+my_chart+", "/home/user/output", "my_chart")


def test_exact_property_set_on_success(ep: Endpoint) -> None:
    with ep.telemetry.track_command(SPEC_ARGV):
        pass
    props = ep.one()
    assert set(props) == COMMON_KEYS | CLI_KEYS | {"project_hash"}
    assert props["success"] is True
    assert props["project_hash"] == PROJECT_HASH
    assert isinstance(props["duration_ms"], float)


def test_exact_property_set_on_failure_with_counts(ep: Endpoint) -> None:
    with pytest.raises(RuntimeError), ep.telemetry.track_command(SPEC_ARGV) as command:
        command.job_count = 7
        command.object_counts = {"charts": 3, "traces": 2}
        raise RuntimeError("boom")
    props = ep.one()
    assert set(props) == COMMON_KEYS | CLI_KEYS | {
        "project_hash",
        "error_type",
        "job_count",
        "object_counts",
    }
    assert props["success"] is False
    assert props["error_type"] == "RuntimeError"
    assert props["job_count"] == 7
    assert props["object_counts"] == {"charts": 3, "traces": 2}


def test_new_installation_once_with_common_properties_only(
    telemetry: Telemetry, capture: CaptureServer, home: Path
) -> None:
    with telemetry.track_command(["visivo", "compile"]):
        pass
    installs = Endpoint(telemetry, capture).events("new_installation")
    assert len(installs) == 1
    assert set(installs[0]["properties"]) == COMMON_KEYS
    assert (home / ".visivo" / "machine_id").is_file()
    # A second process on the same machine: no second installation.
    again = Telemetry("visivo", "1.4.0", api_key="phc_test", host=capture.url, project_dir=home)
    with again.track_command(["visivo", "compile"]):
        pass
    assert again.flush(5.0)
    again.shutdown(1.0)
    events = capture.wait_for(3)
    assert [e["event"] for e in events].count("new_installation") == 1
    assert [e["event"] for e in events].count("cli_command") == 2


# -- leaks: a distinctive secret per case, searched for in every raw body --

LEAK_CASES: list[tuple[str, list[str], str]] = [
    ("long-eq", ["--token=S3CRET-tok-001"], "S3CRET-tok-001"),
    ("long-space", ["--password", "S3CRET-pw-002"], "S3CRET-pw-002"),
    ("short-attached", ["-pS3CRETpw003"], "S3CRETpw003"),
    ("cluster", ["-abcS3CRETcl004"], "S3CRETcl004"),
    ("cluster-eq", ["-x=S3CRETeq005"], "S3CRETeq005"),
    ("repeated", ["--token", "S3CRET-r1-006", "--token", "S3CRET-r2-006"], "S3CRET-r2-006"),
    ("repeated-first", ["--token", "S3CRET-r1-007", "--token", "x"], "S3CRET-r1-007"),
    ("after-double-dash", ["--", "S3CRET-dd-008", "--token=x"], "S3CRET-dd-008"),
    ("flag-after-double-dash", ["--", "--S3CRETflag009"], "S3CRETflag009"),
    ("unknown-flag-value", ["--frobnicate", "S3CRET-unk-010"], "S3CRET-unk-010"),
    ("unknown-flag-eq", ["--frobnicate=S3CRET-unk-011"], "S3CRET-unk-011"),
    ("api-key-variant", ["--API_KEY", "S3CRET-ak-012"], "S3CRET-ak-012"),
    ("secret-looking-like-flag", ["--password", "-S3CRETdash013"], "S3CRETdash013"),
    ("very-long", ["--name", "S3CRET-long-014" + "x" * 5000], "S3CRET-long-014"),
    ("long-flag-name", ["--" + "S3CRETflagname015" * 5], "S3CRETflagname015"),
    ("non-ascii", ["--label", "S3CRÉT-ünï-016-пароль"], "S3CRÉT-ünï-016-пароль"),
    ("non-ascii-flag", ["--пароль=S3CRET-017"], "S3CRET-017"),
    ("path", ["--output-dir", "/home/S3CRETuser018/out"], "S3CRETuser018"),
    ("windows-path", ["C:\\Users\\S3CRETuser019\\x"], "S3CRETuser019"),
    ("positional", ["S3CRET-pos-020"], "S3CRET-pos-020"),
    ("url-with-credentials", ["https://u:S3CRETurl021@example.com"], "S3CRETurl021"),
    ("empty-and-dashes", ["", "-", "---S3CRET022"], "S3CRET022"),
]


@pytest.mark.parametrize(("case", "args", "secret"), LEAK_CASES, ids=[c[0] for c in LEAK_CASES])
def test_no_secret_reaches_the_endpoint(
    ep: Endpoint, case: str, args: list[str], secret: str
) -> None:
    with ep.telemetry.track_command(["visivo", "run", *args]):
        pass
    props = ep.one()
    assert props["command"] == "run"
    ep.assert_nowhere(secret)


@pytest.mark.parametrize(
    ("first", "secret"),
    [
        ("S3CRET=cmd/023", "cmd/023"),  # not a plausible command name
        ("S3CRET.cmd.024", "S3CRET.cmd.024"),
        ("ghp_S3CRETcmd025" + "a" * 30, "S3CRETcmd025"),  # longer than any command name
        ("-S3CRETcmd026", "S3CRETcmd026"),
        ("--S3CRET.cmd027=x", "S3CRET.cmd027"),
        ("пароль-S3CRET028", "S3CRET028"),
    ],
)
def test_secret_in_the_command_position(ep: Endpoint, first: str, secret: str) -> None:
    with ep.telemetry.track_command(["visivo", first, "--token", "S3CRETtail"]):
        pass
    props = ep.one()
    assert props["command"] in {"help", VALUE, PATH}
    ep.assert_nowhere(secret, "S3CRETtail")


def test_known_commands_hide_a_plausible_looking_first_argument(ep: Endpoint) -> None:
    # argv alone cannot tell "hunter2" from a command name; the tool's command list can.
    tracker = CommandTracker(ep.telemetry, ["visivo", "hunter2S3CRET"], commands={"run", "compile"})
    with tracker:
        pass
    with CommandTracker(ep.telemetry, ["visivo", "run"], commands={"run", "compile"}):
        pass
    events = ep.events()
    assert [e["properties"]["command"] for e in events] == [VALUE, "run"]
    ep.assert_nowhere("hunter2S3CRET")


_SPELLINGS = st.sampled_from(
    [
        "--token {}",
        "--token={}",
        "-p{}",
        "-abc{}",
        "--x {}",
        "--x={}",
        "{}",
        "-- {}",
        "--password {}",
    ]
)
# No "--" prefix: "--ZQX0" is shaped like a flag name, and flag names are kept by design.
_PREFIX = st.sampled_from(["", "/", "~/", "./", "C:\\", "-", "+", "é", "=", "\\\\srv\\"])


@st.composite
def argv_with_secrets(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """`visivo run ...` with each secret written in one of the spellings, among decoys."""
    argv = ["visivo", "run"]
    secrets: list[str] = []
    for i in range(draw(st.integers(1, 6))):
        body = draw(st.text(alphabet="abcdefXYZ0123456789_-.é漢", min_size=3, max_size=12))
        hidden = f"ZQX{i}{body}QZX"
        secrets.append(hidden)
        spelled = draw(_SPELLINGS).format(draw(_PREFIX) + hidden)
        argv.extend(spelled.split(" "))
        if draw(st.booleans()):
            argv.append(draw(st.sampled_from(["--verbose", "-v", "--threads", "4", "--"])))
    return argv, secrets


@settings(max_examples=300, deadline=None)
@given(argv_with_secrets())
def test_property_no_secret_in_the_event(case: tuple[list[str], list[str]]) -> None:
    argv, secrets = case
    calls: list[dict[str, Any]] = []
    tracker = CommandTracker(_StubTelemetry(calls), argv)  # type: ignore[arg-type]
    with tracker:
        pass
    assert len(calls) == 1
    dumped = json.dumps(calls[0], ensure_ascii=False)
    for hidden in secrets:
        assert hidden not in dumped


@settings(max_examples=25, deadline=None)
@given(argv_with_secrets())
def test_property_no_secret_reaches_the_endpoint(
    shared: Endpoint, case: tuple[list[str], list[str]]
) -> None:
    argv, secrets = case
    ep = Endpoint(shared.telemetry, shared.capture)  # one view per example
    with ep.telemetry.track_command(argv):
        pass
    assert ep.one()["command"] == "run"
    ep.assert_nowhere(*secrets)


class _StubTelemetry:
    """Just what a tracker uses, for the fast property test."""

    enabled = True
    project_hash: str | None = None

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls

    def hash_project(self, name: str) -> str:
        return project_hash("visivo", name)

    def _record(self, event: str, properties: dict[str, Any]) -> None:
        self.calls.append(properties)


# -- outcomes --


def test_failure_sends_the_class_never_the_message(ep: Endpoint) -> None:
    error = ValueError("secret message S3CRETmsg")
    with pytest.raises(ValueError) as caught, ep.telemetry.track_command(SPEC_ARGV):
        raise error
    assert caught.value is error
    props = ep.one()
    assert props["success"] is False
    assert props["error_type"] == "ValueError"
    ep.assert_nowhere("secret message", "S3CRETmsg")


@pytest.mark.parametrize(
    ("code", "success"),
    [(0, True), (None, True), (False, True), (1, False), (2, False), ("msg S3CRET", False)],
)
def test_system_exit_codes(ep: Endpoint, code: object, success: bool) -> None:
    exit_exc = SystemExit(code)
    with pytest.raises(SystemExit) as caught, ep.telemetry.track_command(SPEC_ARGV):
        raise exit_exc
    assert caught.value is exit_exc
    props = ep.one()
    assert props["success"] is success
    if success:
        assert "error_type" not in props
    else:
        assert props["error_type"] == "SystemExit"
    assert "S3CRET" not in everything_received(ep.capture)


def test_keyboard_interrupt_is_recorded_and_re_raised(ep: Endpoint) -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as caught, ep.telemetry.track_command(SPEC_ARGV):
        raise interrupt
    assert caught.value is interrupt
    props = ep.one()
    assert props["success"] is False
    assert props["error_type"] == "KeyboardInterrupt"


def test_exception_propagates_as_the_same_object_with_its_traceback(
    rec: Recorder,
) -> None:
    class Custom(Exception):
        pass

    error = Custom("x")
    with pytest.raises(Custom) as caught, CommandTracker(rec.telemetry, SPEC_ARGV):
        raise error
    assert caught.value is error
    assert caught.value.__traceback__ is not None
    assert caught.value.__context__ is None  # nothing of ours got chained onto it
    assert rec.calls[0]["error_type"] == "Custom"


def test_exit_returns_falsy_so_nothing_is_swallowed(rec: Recorder) -> None:
    tracker = CommandTracker(rec.telemetry, SPEC_ARGV)
    tracker.__enter__()
    error = OSError("e")
    assert not tracker.__exit__(OSError, error, None)  # type: ignore[func-returns-value]


def test_duration_is_monotonic_milliseconds(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, SPEC_ARGV):
        time.sleep(0.05)
    duration = rec.calls[0]["duration_ms"]
    assert 40 <= duration < 2000
    assert duration == round(duration, 3)


def test_duration_sanity_through_the_endpoint(ep: Endpoint) -> None:
    with ep.telemetry.track_command(SPEC_ARGV):
        time.sleep(0.05)
    assert 40 <= ep.one()["duration_ms"] < 2000


# -- what the command body sets --


def test_counts_and_project_hash_when_set(ep: Endpoint) -> None:
    with ep.telemetry.track_command(["visivo", "compile"]) as command:
        command.job_count = 12
        command.object_counts = {"charts": 4, "traces": 0}
        command.project_name = "other-project S3CRETproj"
    props = ep.one()
    assert props["job_count"] == 12
    assert props["object_counts"] == {"charts": 4, "traces": 0}
    assert props["project_hash"] == project_hash("visivo", "other-project S3CRETproj")
    ep.assert_nowhere("S3CRETproj", "other-project")


def test_project_name_is_write_only(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "run"]) as command:
        command.project_name = "raw-name"
        assert command.project_name is None
        assert command.project_hash == project_hash("visivo", "raw-name")
    assert "raw-name" not in json.dumps(rec.calls)


def test_unset_values_are_omitted(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "run"]):
        pass
    assert set(rec.calls[0]) == CLI_KEYS  # no project name given to this Telemetry


@pytest.mark.parametrize(
    "job_count", [-1, True, False, 1.5, "3", None, 2**60, float("nan"), [1], object()]
)
def test_bad_job_count_is_dropped(rec: Recorder, job_count: Any) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "run"]) as command:
        command.job_count = job_count
    assert "job_count" not in rec.calls[0]


def test_object_counts_keep_only_valid_entries(rec: Recorder) -> None:
    counts: dict[Any, Any] = {
        "charts": 3,
        "traces": -1,
        "models": True,
        "tables": 2.0,
        "dash boards": 1,
        "/home/S3CRET": 1,
        "S3CRET" * 20: 1,
        "é": 1,
        5: 1,
        "selectors": 0,
        "big": 2**60,
    }
    with CommandTracker(rec.telemetry, ["visivo", "compile"]) as command:
        command.object_counts = counts
    assert rec.calls[0]["object_counts"] == {"charts": 3, "selectors": 0}


def test_object_counts_are_capped(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "compile"]) as command:
        command.object_counts = {f"type_{i}": i for i in range(80)}
    assert len(rec.calls[0]["object_counts"]) == 50
    assert list(rec.calls[0]["object_counts"]) == [f"type_{i}" for i in range(50)]


def test_object_counts_that_are_no_mapping_are_dropped(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "compile"]) as command:
        command.object_counts = [("charts", 1)]  # type: ignore[assignment]
    assert "object_counts" not in rec.calls[0]


def test_a_bad_project_hash_is_not_sent(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "run"]) as command:
        command.project_hash = "my-raw-project-name"
    assert "project_hash" not in rec.calls[0]


# -- telemetry never breaks the command --


def test_a_failing_recorder_never_reaches_the_command(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry = Telemetry("visivo", "1.0", api_key="phc_test", host="http://127.0.0.1:9")

    def broken(event: str, properties: dict[str, Any]) -> None:
        raise RuntimeError("telemetry bug")

    monkeypatch.setattr(telemetry, "_record", broken)
    with telemetry.track_command(SPEC_ARGV):
        pass
    with pytest.raises(KeyError), telemetry.track_command(SPEC_ARGV):
        raise KeyError("the command's own")


def test_a_failing_sanitizer_never_reaches_the_command(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import telemetry_middleware.command as command_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sanitizer bug")

    monkeypatch.setattr(command_module, "sanitize_command", broken)
    with CommandTracker(rec.telemetry, SPEC_ARGV):
        pass
    assert rec.calls[0]["command"] == VALUE and rec.calls[0]["command_args"] == []


def test_disabled_telemetry_does_nothing(home: Path) -> None:
    telemetry = Telemetry(
        "visivo", "1.0", api_key="phc_test", environ={"VISIVO_TELEMETRY_DISABLED": "1"}
    )
    with telemetry.track_command(SPEC_ARGV) as command:
        command.job_count = 3
    assert telemetry._emitter is None
    assert not (home / ".visivo").exists()


# -- decorator forms and current_command --


def test_decorator_gives_each_call_a_fresh_tracker(rec: Recorder) -> None:
    seen: list[CommandTracker] = []

    @rec.telemetry.track_command(["visivo", "run", "--threads", "4"])
    def run(jobs: int) -> int:
        command = current_command()
        assert command is not None
        assert command.job_count is None  # nothing left over from an earlier call
        command.job_count = jobs
        seen.append(command)
        return jobs * 2

    assert run(3) == 6
    assert run(5) == 10
    with pytest.raises(TypeError):
        run(None)  # type: ignore[arg-type]
    assert seen[0] is not seen[1]
    assert [r.get("job_count") for r in rec.calls] == [3, 5, None]
    assert [r["success"] for r in rec.calls] == [True, True, False]
    assert rec.calls[2]["error_type"] == "TypeError"
    assert current_command() is None


def test_track_reads_sys_argv_at_each_call(rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    @track(rec.telemetry, value_options={"--name"})
    def main() -> None:
        pass

    monkeypatch.setattr(sys, "argv", ["visivo", "compile", "--name", "-x"])
    main()
    monkeypatch.setattr(sys, "argv", ["visivo", "serve"])
    main()
    assert [(r["command"], r["command_args"]) for r in rec.calls] == [
        ("compile", ["--name", VALUE]),
        ("serve", []),
    ]


def test_async_function_is_timed_until_it_finishes(rec: Recorder) -> None:
    @track(rec.telemetry, ["visivo", "serve"])
    async def serve() -> str:
        await asyncio.sleep(0.05)
        return "done"

    assert asyncio.run(serve()) == "done"
    assert rec.calls[0]["duration_ms"] >= 40


def test_option_tables_pass_through(rec: Recorder) -> None:
    argv = ["visivo", "run", "--offset", "-5", "-vq"]
    with CommandTracker(rec.telemetry, argv, value_options={"--offset"}, flag_options={"-v", "-q"}):
        pass
    assert rec.calls[0]["command_args"] == ["--offset", VALUE, "-v", "-q"]


def test_nested_trackers_restore_the_outer_one(rec: Recorder) -> None:
    with CommandTracker(rec.telemetry, ["visivo", "run"]) as outer:
        with CommandTracker(rec.telemetry, ["visivo", "compile"]) as inner:
            assert current_command() is inner
        assert current_command() is outer
    assert current_command() is None


# -- opt-out, in real processes --

_CLI_SCRIPT = """
import sys
from telemetry_middleware import Telemetry

telemetry = Telemetry(
    "visivo", "1.4.0", project_name="proj", project_dir=sys.argv[1],
    api_key="phc_test", host=sys.argv[2],
)
with telemetry.track_command(["visivo", "run", "--threads", "4"]) as command:
    command.job_count = 1
print("enabled" if telemetry.enabled else "disabled")
"""


def run_cli_script(
    tmp_path: Path, home: Path, capture: CaptureServer, **env: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "tiny_cli.py"
    script.write_text(_CLI_SCRIPT)
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    return subprocess.run(
        [PYTHON, str(script), str(project), capture.url],
        env=subprocess_env(home, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_enabled_process_sends_install_and_command(
    tmp_path: Path, home: Path, capture: CaptureServer
) -> None:
    """The control for the opt-out cases below: the same script does send when enabled."""
    result = run_cli_script(tmp_path, home, capture)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "enabled\n" and result.stderr == ""
    names = [e["event"] for e in capture.wait_for(2, timeout=5.0)]
    assert sorted(names) == ["cli_command", "new_installation"]
    assert (home / ".visivo" / "machine_id").is_file()


@pytest.mark.parametrize("source", ["env", "project", "global"])
def test_opt_out_sends_nothing_at_all(
    tmp_path: Path, home: Path, capture: CaptureServer, source: str
) -> None:
    env: dict[str, str] = {}
    if source == "env":
        env["VISIVO_TELEMETRY_DISABLED"] = "1"
    elif source == "project":
        (tmp_path / "project").mkdir()
        (tmp_path / "project" / "project.visivo.yml").write_text(
            "defaults:\n  telemetry_enabled: false\n"
        )
    else:
        (home / ".visivo").mkdir()
        (home / ".visivo" / "config.yml").write_text("telemetry_enabled: false\n")
    result = run_cli_script(tmp_path, home, capture, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "disabled\n" and result.stderr == ""
    # An enabled child hands its events to a detached sender at exit; they arrive within
    # a few hundred ms (the control above), so a second of silence means nothing was sent.
    time.sleep(1.0)
    assert capture.requests == 0
    assert capture.bodies == []
    assert not (home / ".visivo" / "machine_id").exists()


# -- Click --


def make_cli(telemetry: Telemetry) -> click.Group:
    from telemetry_middleware.click import instrument_click

    @click.group()
    @click.option("--verbose", "-v", count=True)
    @click.option("--profile", "-P")
    def cli(verbose: int, profile: str | None) -> None:
        pass

    @cli.command()
    @click.option("--dag-filter")
    @click.option("--threads", "-t", type=int)
    @click.option("--output-dir", type=click.Path())
    @click.option("--shout/--no-shout")
    @click.option("--token")
    @click.option("--dry-run", "-n", is_flag=True)
    def run(**options: Any) -> None:
        command = current_command()
        assert command is not None
        command.job_count = 5
        if options["threads"] == 99:
            raise ValueError("S3CRET failure message")
        if options["threads"] == 98:
            raise KeyboardInterrupt
        if options["threads"] == 97:
            click.get_current_context().exit(3)

    @cli.group()
    def db() -> None:
        pass

    @db.command()
    @click.argument("target")
    @click.option("--step", "-s", type=int)
    def migrate(target: str, step: int | None) -> None:
        pass

    instrument_click(cli, telemetry)
    return cli


def click_events(ep: Endpoint) -> list[dict[str, Any]]:
    return [e["properties"] for e in ep.events()]


def test_click_spec_example(ep: Endpoint) -> None:
    cli = make_cli(ep.telemetry)
    result = CliRunner().invoke(cli, SPEC_ARGV[1:])
    assert result.exit_code == 0, result.output
    (props,) = click_events(ep)
    assert props["command"] == "run"
    assert props["command_args"] == SPEC_ARGS
    assert props["success"] is True
    assert props["job_count"] == 5


@pytest.mark.parametrize(
    ("args", "command", "expected"),
    [
        # -5 is the value of --threads: Click's table says so, argv alone could not.
        (["run", "--threads", "-5", "--shout"], "run", ["--threads", VALUE, "--shout"]),
        (["run", "-t-5", "-n"], "run", ["-t", VALUE, "-n"]),
        (["run", "--token", "--S3CRETx", "--no-shout"], "run", ["--token", REDACTED, "--no-shout"]),
        (
            ["-vvv", "-P", "prod", "run", "--dry-run"],
            "run",
            ["-v", "-v", "-v", "-P", VALUE, "--dry-run"],
        ),
        (["--profile=S3CRETp", "run"], "run", ["--profile=" + VALUE]),
        (["db", "migrate", "S3CRETtarget", "-s", "2"], "db migrate", [VALUE, "-s", VALUE]),
        (["db", "migrate", "--", "-S3CRET"], "db migrate", ["--", VALUE]),
    ],
)
def test_click_exact_sanitization_from_the_option_table(
    ep: Endpoint, args: list[str], command: str, expected: list[str]
) -> None:
    cli = make_cli(ep.telemetry)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (props,) = click_events(ep)
    assert (props["command"], props["command_args"]) == (command, expected)
    assert props["success"] is True
    assert "S3CRET" not in everything_received(ep.capture)


@pytest.mark.parametrize(
    ("args", "exit_code", "command", "success", "error_type"),
    [
        (["--help"], 0, "help", True, None),
        (["run", "--help"], 0, "run", True, None),
        (["run", "--bogus", "S3CRET"], 2, "run", False, "NoSuchOption"),
        (["run", "--threads", "notanint"], 2, "run", False, "BadParameter"),
        (["S3CRETcommand"], 2, VALUE, False, "NoSuchCommand"),
        (["db", "S3CRETsub"], 2, "db " + VALUE, False, "NoSuchCommand"),
        (["run", "--threads", "99"], 1, "run", False, "ValueError"),
        (["run", "--threads", "98"], 1, "run", False, "KeyboardInterrupt"),
        (["run", "--threads", "97"], 3, "run", False, "Exit"),
    ],
)
def test_click_outcomes(
    ep: Endpoint,
    args: list[str],
    exit_code: int,
    command: str,
    success: bool,
    error_type: str | None,
) -> None:
    cli = make_cli(ep.telemetry)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == exit_code, result.output
    (props,) = click_events(ep)
    assert props["command"] == command
    assert props["success"] is success
    assert props.get("error_type") == error_type
    ep.assert_nowhere("S3CRET")


def test_click_exceptions_propagate_unchanged_outside_standalone_mode(ep: Endpoint) -> None:
    cli = make_cli(ep.telemetry)
    with pytest.raises(ValueError, match="S3CRET failure message"):
        cli.main(["run", "--threads", "99"], standalone_mode=False)
    with pytest.raises(click.UsageError):
        cli.main(["run", "--bogus"], standalone_mode=False)
    events = click_events(ep)
    assert [e["error_type"] for e in events] == ["ValueError", "NoSuchOption"]


def test_click_shell_completion_sends_nothing(ep: Endpoint) -> None:
    cli = make_cli(ep.telemetry)
    result = CliRunner().invoke(
        cli,
        [],
        prog_name="visivo",
        env={"_VISIVO_COMPLETE": "bash_complete", "COMP_WORDS": "visivo ", "COMP_CWORD": "1"},
    )
    assert result.exit_code == 0
    with CommandTracker(ep.telemetry, ["visivo", "marker"]):
        pass  # flushed behind anything completion might have queued
    (props,) = click_events(ep)
    assert props["command"] == "marker"


def test_click_adapter_is_not_imported_by_the_core() -> None:
    code = "import telemetry_middleware, sys; print('click' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False"


def test_click_cli_as_a_real_process(tmp_path: Path, home: Path, capture: CaptureServer) -> None:
    script = tmp_path / "click_cli.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import click
            from telemetry_middleware import Telemetry
            from telemetry_middleware.click import instrument_click

            telemetry = Telemetry("visivo", "1.4.0", api_key="phc_test",
                                  host=sys.argv.pop(1), project_dir=".")

            @click.group()
            def cli():
                pass

            @cli.command()
            @click.option("--threads", type=int)
            @click.option("--password")
            def run(threads, password):
                sys.exit(4)

            instrument_click(cli, telemetry)
            cli()
            """
        )
    )
    result = subprocess.run(
        [PYTHON, str(script), capture.url, "run", "--threads", "-3", "--password", "S3CRETpw"],
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 4, result.stderr
    assert result.stderr == ""
    events = [e for e in capture.wait_for(2, timeout=5.0) if e["event"] == "cli_command"]
    assert len(events) == 1
    props = events[0]["properties"]
    assert props["command_args"] == ["--threads", VALUE, "--password", REDACTED]
    assert (props["success"], props["error_type"]) == (False, "SystemExit")
    assert_nowhere(capture, "S3CRETpw")


def test_click_chained_lazy_and_single_commands(rec: Recorder) -> None:
    from telemetry_middleware.click import instrument_click

    @click.group(chain=True)
    def chain() -> None:
        pass

    @chain.command()
    @click.option("--n", type=int)
    def a(n: int | None) -> None:
        pass

    @chain.command()
    @click.option("-f", is_flag=True)
    def b(f: bool) -> None:
        pass

    class Lazy(click.Group):
        """Creates its subgroup on demand: never in `commands` before it is resolved."""

        def list_commands(self, ctx: click.Context) -> list[str]:
            return ["sub"]

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            if name != "sub":
                return None
            group = click.Group("sub")
            group.add_command(click.Command("leaf", params=[click.Option(["--key-file"])]))
            return group

    @click.command()
    @click.option("--x")
    @click.argument("f")
    def single(x: str | None, f: str) -> None:
        pass

    runner = CliRunner()
    chained = instrument_click(chain, rec.telemetry)
    assert runner.invoke(chained, ["a", "--n", "-3", "b", "-f"]).exit_code == 0
    lazy = instrument_click(Lazy("lazy"), rec.telemetry)
    assert runner.invoke(lazy, ["sub", "leaf", "--key-file", "S3CRET"]).exit_code == 0
    assert instrument_click(single, rec.telemetry) is single
    assert runner.invoke(single, ["--x", "S3CRET", "S3CRET.txt"]).exit_code == 0
    assert [(r["command"], r["command_args"], r["success"]) for r in rec.calls] == [
        ("a b", ["--n", VALUE, "-f"], True),
        ("sub leaf", ["--key-file", REDACTED], True),
        ("single", ["--x", VALUE, PATH], True),
    ]
    assert "S3CRET" not in json.dumps(rec.calls)
