"""Opt-out precedence, accepted env values, config-file shapes, API key and host, debug mode.

Every case passes its own environ (HOME in a tmp dir, CI=false), so nothing here reads the
machine's real HOME, environment or a project file in the working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PYTHON, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_middleware import Telemetry
from telemetry_middleware.capture_server import CaptureServer
from telemetry_middleware.settings import (
    DEFAULT_HOST,
    Settings,
    check_app_name,
    env_prefix,
    resolve,
)

KEY = "phc_passed"


class Env:
    """A HOME and a project dir of one test, and ways to fill them."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.project = root / "project"
        self.home.mkdir()
        self.project.mkdir()

    @property
    def global_file(self) -> Path:
        return self.home / ".visivo" / "config.yml"

    @property
    def project_file(self) -> Path:
        return self.project / "project.visivo.yml"

    def environ(self, **extra: str) -> dict[str, str]:
        return {"HOME": str(self.home), "CI": "false", **extra}

    def write_global(self, text: str) -> Path:
        self.global_file.parent.mkdir(exist_ok=True)
        self.global_file.write_text(text, encoding="utf-8")
        return self.global_file

    def write_project(self, text: str) -> Path:
        self.project_file.write_text(text, encoding="utf-8")
        return self.project_file

    def resolve(self, api_key: str | None = KEY, host: str | None = None, **extra: str) -> Settings:
        return resolve(
            "visivo",
            project_dir=self.project,
            api_key=api_key,
            host=host,
            environ=self.environ(**extra),
        )

    def telemetry(
        self, api_key: str | None = KEY, host: str | None = None, **extra: str
    ) -> Telemetry:
        return Telemetry(
            "visivo",
            "1.4.0",
            project_name="my-project",
            project_dir=self.project,
            api_key=api_key,
            host=host,
            environ=self.environ(**extra),
        )


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- the baseline: nothing opts out --


def test_no_source_opting_out_is_enabled(env: Env) -> None:
    s = env.resolve()
    assert s.enabled is True
    assert s.debug is False
    assert s.sends is True
    assert s.reason.startswith("enabled")
    assert s.api_key == KEY
    assert s.host == DEFAULT_HOST
    assert s.config_dir == env.home / ".visivo"


def test_resolving_writes_nothing(env: Env) -> None:
    env.resolve()
    env.telemetry()
    assert files_under(env.home) == []
    assert files_under(env.project) == []


# -- VISIVO_TELEMETRY_DISABLED --

DISABLING = ["1", "true", "TRUE", "True", "yes", "YES", "Yes", "on", "ON", "On", " 1 "]
NO_EFFECT = ["0", "false", "FALSE", "False", "no", "NO", "off", "Off", "OFF", ""]
UNKNOWN = ["maybe", "2", "-1", "y", "n", "disabled", "enabled", "nope", "tru"]


@pytest.mark.parametrize("value", DISABLING)
def test_disabled_variable_true_values_turn_off(env: Env, value: str) -> None:
    s = env.resolve(VISIVO_TELEMETRY_DISABLED=value)
    assert s.enabled is False
    assert "VISIVO_TELEMETRY_DISABLED" in s.reason
    assert env.telemetry(VISIVO_TELEMETRY_DISABLED=value).status().reason == s.reason


@pytest.mark.parametrize("value", NO_EFFECT)
def test_disabled_variable_false_values_have_no_effect(env: Env, value: str) -> None:
    s = env.resolve(VISIVO_TELEMETRY_DISABLED=value)
    assert s.enabled is True
    assert s.reason.startswith("enabled")
    assert env.telemetry(VISIVO_TELEMETRY_DISABLED=value).enabled is True


@pytest.mark.parametrize("value", UNKNOWN)
def test_disabled_variable_unknown_values_turn_off(env: Env, value: str) -> None:
    s = env.resolve(VISIVO_TELEMETRY_DISABLED=value)
    assert s.enabled is False
    assert "VISIVO_TELEMETRY_DISABLED" in s.reason
    assert env.telemetry(VISIVO_TELEMETRY_DISABLED=value).enabled is False


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(max_size=12))
def test_disabled_variable_any_value_but_the_false_words_turns_off(env: Env, value: str) -> None:
    s = env.resolve(VISIVO_TELEMETRY_DISABLED=value)
    no_effect = value.strip().lower() in {"0", "false", "no", "off", ""}
    assert s.enabled is no_effect


def test_other_apps_disabled_variable_is_ignored(env: Env) -> None:
    assert env.resolve(OTHERTOOL_TELEMETRY_DISABLED="1").enabled is True


# -- DO_NOT_TRACK --


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "YES"])
def test_do_not_track_turns_off(env: Env, value: str) -> None:
    s = env.resolve(DO_NOT_TRACK=value)
    assert s.enabled is False
    assert "DO_NOT_TRACK" in s.reason
    assert env.telemetry(DO_NOT_TRACK=value).status().reason == s.reason


@pytest.mark.parametrize("value", ["0", "false", "FALSE", ""])
def test_do_not_track_false_has_no_effect(env: Env, value: str) -> None:
    assert env.resolve(DO_NOT_TRACK=value).enabled is True
    assert env.telemetry(DO_NOT_TRACK=value).enabled is True


# -- config files --


@pytest.mark.parametrize("flag", ["false", "False", "no", "off"])
def test_project_file_opts_out(env: Env, flag: str) -> None:
    # YAML 1.1 (PyYAML) reads unquoted no/off as booleans, so they are opt-outs too.
    path = env.write_project(f"name: demo\ndefaults:\n  telemetry_enabled: {flag}\n")
    s = env.resolve()
    assert s.enabled is False
    assert "project file" in s.reason
    assert str(path) in s.reason


@pytest.mark.parametrize("flag", ["false", "no"])
def test_global_file_opts_out(env: Env, flag: str) -> None:
    path = env.write_global(f"telemetry_enabled: {flag}\n")
    s = env.resolve()
    assert s.enabled is False
    assert "global file" in s.reason
    assert str(path) in s.reason


@pytest.mark.parametrize(
    "project_text",
    [
        "defaults:\n  telemetry_enabled: true\n",
        "defaults: {}\n",
        "name: demo\n",
        "defaults:\n  other: 1\n",
        "telemetry_enabled: false\n",  # top level is not where the project file keeps it
    ],
)
def test_project_file_without_opt_out_has_no_effect(env: Env, project_text: str) -> None:
    env.write_project(project_text)
    assert env.resolve().enabled is True


@pytest.mark.parametrize("global_text", ["telemetry_enabled: true\n", "other_key: 42\n"])
def test_global_file_without_opt_out_has_no_effect(env: Env, global_text: str) -> None:
    env.write_global(global_text)
    assert env.resolve().enabled is True


def test_project_on_and_global_off_is_off(env: Env) -> None:
    env.write_project("defaults:\n  telemetry_enabled: true\n")
    env.write_global("telemetry_enabled: false\n")
    s = env.resolve()
    assert s.enabled is False
    assert "global file" in s.reason


def test_global_on_and_project_off_is_off(env: Env) -> None:
    env.write_project("defaults:\n  telemetry_enabled: false\n")
    env.write_global("telemetry_enabled: true\n")
    s = env.resolve()
    assert s.enabled is False
    assert "project file" in s.reason


def test_env_off_beats_every_opt_in(env: Env) -> None:
    env.write_project("defaults:\n  telemetry_enabled: true\n")
    env.write_global("telemetry_enabled: true\n")
    s = env.resolve(
        VISIVO_TELEMETRY_DISABLED="1",
        VISIVO_TELEMETRY_DEBUG="1",
        VISIVO_POSTHOG_API_KEY="phc_env",
        VISIVO_POSTHOG_HOST="https://eu.i.posthog.com",
    )
    assert s.enabled is False
    assert s.debug is False
    assert s.sends is False
    assert "VISIVO_TELEMETRY_DISABLED" in s.reason


# Every combination of opting-out sources: the reason names the highest-precedence one.
SOURCES = ("disabled_var", "do_not_track", "project", "global")
COMBINATIONS = [
    tuple(name for bit, name in enumerate(SOURCES) if mask & (1 << bit))
    for mask in range(1, 1 << len(SOURCES))
]
REASON_WORDS = {
    "disabled_var": "VISIVO_TELEMETRY_DISABLED",
    "do_not_track": "DO_NOT_TRACK",
    "project": "project file",
    "global": "global file",
}


@pytest.mark.parametrize("sources", COMBINATIONS, ids="+".join)
def test_reason_names_the_highest_precedence_opt_out(env: Env, sources: tuple[str, ...]) -> None:
    extra = {}
    if "disabled_var" in sources:
        extra["VISIVO_TELEMETRY_DISABLED"] = "true"
    if "do_not_track" in sources:
        extra["DO_NOT_TRACK"] = "1"
    env.write_project(f"defaults:\n  telemetry_enabled: {'project' not in sources}\n".lower())
    env.write_global(f"telemetry_enabled: {'global' not in sources}\n".lower())
    s = env.resolve(**extra)
    assert s.enabled is False
    winner = sources[0]  # SOURCES is in precedence order
    assert REASON_WORDS[winner] in s.reason
    for loser in sources[1:]:
        assert REASON_WORDS[loser] not in s.reason
    t = env.telemetry(**extra)
    assert t.enabled is False
    assert t.status().enabled is False
    assert t.status().reason == s.reason


def test_env_no_effect_value_lets_the_project_file_decide(env: Env) -> None:
    env.write_project("defaults:\n  telemetry_enabled: false\n")
    s = env.resolve(VISIVO_TELEMETRY_DISABLED="0", DO_NOT_TRACK="0")
    assert s.enabled is False
    assert "project file" in s.reason


# -- malformed files count as an opt-out, and the reason says so --

# (file text, a fragment the reason must hold)
BAD_SHAPES_BOTH = [
    pytest.param("telemetry_enabled: [unclosed\n", "cannot be parsed", id="bad-yaml"),
    pytest.param("a: b: c\n", "cannot be parsed", id="bad-yaml-mapping"),
    pytest.param("- telemetry_enabled: false\n- 2\n", "holds a list", id="list"),
    pytest.param("just a string\n", "holds a str", id="string"),
    pytest.param("42\n", "holds a int", id="number"),
]
BAD_SHAPES_PROJECT = [
    pytest.param("defaults: 5\n", "has defaults", id="defaults-int"),
    pytest.param("defaults: [1, 2]\n", "has defaults", id="defaults-list"),
    pytest.param("defaults: off please\n", "has defaults", id="defaults-str"),
    pytest.param('defaults:\n  telemetry_enabled: "no"\n', "has telemetry_enabled", id="quoted"),
    pytest.param('defaults:\n  telemetry_enabled: "false"\n', "has telemetry_enabled", id="qfalse"),
    pytest.param("defaults:\n  telemetry_enabled: 0\n", "has telemetry_enabled", id="zero"),
    pytest.param("defaults:\n  telemetry_enabled: [false]\n", "has telemetry_enabled", id="lst"),
]
BAD_SHAPES_GLOBAL = [
    pytest.param('telemetry_enabled: "no"\n', "has telemetry_enabled", id="quoted"),
    pytest.param('telemetry_enabled: "true"\n', "has telemetry_enabled", id="quoted-true"),
    pytest.param("telemetry_enabled: 1\n", "has telemetry_enabled", id="one"),
    pytest.param("telemetry_enabled:\n", "has telemetry_enabled", id="null"),
    pytest.param("telemetry_enabled: {a: 1}\n", "has telemetry_enabled", id="mapping"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_SHAPES_BOTH + BAD_SHAPES_PROJECT)
def test_malformed_project_file_opts_out(env: Env, text: str, fragment: str) -> None:
    path = env.write_project(text)
    s = env.resolve()
    assert s.enabled is False
    assert s.reason.startswith("disabled")
    assert "project file" in s.reason
    assert str(path) in s.reason
    assert fragment in s.reason


@pytest.mark.parametrize(("text", "fragment"), BAD_SHAPES_BOTH + BAD_SHAPES_GLOBAL)
def test_malformed_global_file_opts_out(env: Env, text: str, fragment: str) -> None:
    path = env.write_global(text)
    s = env.resolve()
    assert s.enabled is False
    assert "global file" in s.reason
    assert str(path) in s.reason
    assert fragment in s.reason


def _make_directory(path: Path) -> None:
    path.mkdir(parents=True)


def _make_dangling_symlink(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.parent / "does-not-exist.yml")


def _make_symlink_loop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path)


def _make_invalid_utf8(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"telemetry_enabled: true\n# \xff\xfe\xfa\n")


UNREADABLE: list[Callable[[Path], None]] = [
    _make_directory,
    _make_dangling_symlink,
    _make_symlink_loop,
    _make_invalid_utf8,
]


@pytest.mark.parametrize("make", UNREADABLE, ids=lambda f: f.__name__[6:])
@pytest.mark.parametrize("which", ["project", "global"])
def test_unreadable_file_opts_out(env: Env, which: str, make: Callable[[Path], None]) -> None:
    path = env.project_file if which == "project" else env.global_file
    make(path)
    s = env.resolve()
    assert s.enabled is False
    assert f"{which} file" in s.reason
    assert str(path) in s.reason
    assert "cannot be read" in s.reason


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="running as root: chmod 000 does not stop root from reading the file",
)
@pytest.mark.parametrize("which", ["project", "global"])
def test_permission_denied_file_opts_out(env: Env, which: str) -> None:
    path = env.write_project("") if which == "project" else env.write_global("")
    path.chmod(0)
    try:
        s = env.resolve()
    finally:
        path.chmod(0o600)
    assert s.enabled is False
    assert "cannot be read" in s.reason


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
@pytest.mark.parametrize("which", ["project", "global"])
def test_empty_file_has_no_opinion(env: Env, which: str, text: str) -> None:
    if which == "project":
        env.write_project(text)
    else:
        env.write_global(text)
    s = env.resolve()
    assert s.enabled is True
    assert s.reason.startswith("enabled")


def test_malformed_project_file_outranks_global_opt_out(env: Env) -> None:
    env.write_project("defaults: 5\n")
    env.write_global("telemetry_enabled: false\n")
    s = env.resolve()
    assert "project file" in s.reason
    assert "global file" not in s.reason


def test_env_opt_out_outranks_malformed_files(env: Env) -> None:
    env.write_project("{{{\n")
    env.write_global("[\n")
    s = env.resolve(DO_NOT_TRACK="1")
    assert s.enabled is False
    assert "DO_NOT_TRACK" in s.reason
    assert "file" not in s.reason


def test_project_dir_defaults_to_the_working_directory(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.write_project("defaults:\n  telemetry_enabled: false\n")
    monkeypatch.chdir(env.project)
    s = resolve("visivo", api_key=KEY, environ=env.environ())
    assert s.enabled is False
    assert "project file" in s.reason


def test_project_file_of_another_app_is_ignored(env: Env) -> None:
    (env.project / "project.other.yml").write_text("defaults:\n  telemetry_enabled: false\n")
    (env.home / ".other").mkdir()
    (env.home / ".other" / "config.yml").write_text("telemetry_enabled: false\n")
    assert env.resolve().enabled is True


# -- API key and host --


@pytest.mark.parametrize("api_key", [None, "", "   "])
def test_no_api_key_is_off(env: Env, api_key: str | None) -> None:
    s = env.resolve(api_key=api_key)
    assert s.enabled is False
    assert s.sends is False
    assert "API key" in s.reason
    assert "VISIVO_POSTHOG_API_KEY" in s.reason
    t = env.telemetry(api_key=api_key)
    assert t.enabled is False
    assert "API key" in t.status().reason


def test_env_api_key_overrides_the_passed_one(env: Env) -> None:
    s = env.resolve(api_key=KEY, VISIVO_POSTHOG_API_KEY="phc_env")
    assert s.enabled is True
    assert s.api_key == "phc_env"


def test_env_api_key_is_enough_without_a_passed_one(env: Env) -> None:
    s = env.resolve(api_key=None, VISIVO_POSTHOG_API_KEY="phc_env")
    assert s.enabled is True
    assert s.api_key == "phc_env"


def test_empty_env_api_key_leaves_the_passed_one(env: Env) -> None:
    assert env.resolve(api_key=KEY, VISIVO_POSTHOG_API_KEY="").api_key == KEY


def test_passed_host_is_used(env: Env) -> None:
    assert env.resolve(host="https://eu.i.posthog.com/").host == "https://eu.i.posthog.com"


def test_env_host_overrides_the_passed_one(env: Env) -> None:
    s = env.resolve(host="https://eu.i.posthog.com", VISIVO_POSTHOG_HOST="http://127.0.0.1:9/")
    assert s.enabled is True
    assert s.host == "http://127.0.0.1:9"
    t = env.telemetry(host="https://eu.i.posthog.com", VISIVO_POSTHOG_HOST="http://127.0.0.1:9")
    assert t.status().host == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "bad", ["ftp://x", "not a url", "posthog.example.com", "http://a b", "file:///etc/passwd"]
)
def test_invalid_host_is_off(env: Env, bad: str) -> None:
    for s in (env.resolve(host=bad), env.resolve(VISIVO_POSTHOG_HOST=bad)):
        assert s.enabled is False
        assert "host" in s.reason


def test_opt_out_reason_outranks_an_invalid_host(env: Env) -> None:
    s = env.resolve(host="ftp://x", VISIVO_TELEMETRY_DISABLED="1")
    assert "VISIVO_TELEMETRY_DISABLED" in s.reason


# -- debug mode --


@pytest.mark.parametrize("value", ["1", "true", "TRUE"])
def test_debug_variable_enables_debug(env: Env, value: str) -> None:
    s = env.resolve(VISIVO_TELEMETRY_DEBUG=value)
    assert s.enabled is True
    assert s.debug is True
    assert s.sends is False
    assert "debug" in s.reason
    status = env.telemetry(VISIVO_TELEMETRY_DEBUG=value).status()
    assert status.enabled is True
    assert status.debug is True


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_debug_variable_false_is_not_debug(env: Env, value: str) -> None:
    s = env.resolve(VISIVO_TELEMETRY_DEBUG=value)
    assert s.debug is False
    assert s.sends is True


def test_debug_needs_no_api_key(env: Env) -> None:
    s = env.resolve(api_key=None, VISIVO_TELEMETRY_DEBUG="1")
    assert s.enabled is True
    assert s.debug is True


@pytest.mark.parametrize(
    "opt_out",
    [
        {"VISIVO_TELEMETRY_DISABLED": "1"},
        {"DO_NOT_TRACK": "1"},
        {"project": "defaults:\n  telemetry_enabled: false\n"},
        {"global": "telemetry_enabled: false\n"},
        {"global": "[broken\n"},
    ],
    ids=["disabled-var", "do-not-track", "project", "global", "malformed-global"],
)
def test_debug_loses_to_any_opt_out(env: Env, opt_out: dict[str, str]) -> None:
    extra = dict(opt_out)
    if "project" in extra:
        env.write_project(extra.pop("project"))
    if "global" in extra:
        env.write_global(extra.pop("global"))
    s = env.resolve(VISIVO_TELEMETRY_DEBUG="1", **extra)
    assert s.enabled is False
    assert s.debug is False
    assert "debug mode" not in s.reason
    assert s.reason.startswith("disabled")


# -- app_name --


@pytest.mark.parametrize(
    "name", ["", "../x", "a b", "a/b", "1abc", "-x", ".visivo", "x" * 65, "visivo\n", "vïsivo"]
)
def test_bad_app_names_are_rejected(env: Env, name: str) -> None:
    with pytest.raises(ValueError):
        check_app_name(name)
    with pytest.raises(ValueError):
        Telemetry(name, "1.0", api_key=KEY, environ=env.environ())
    with pytest.raises(ValueError):
        resolve(name, project_dir=env.project, api_key=KEY, environ=env.environ())
    assert files_under(env.home) == []


@pytest.mark.parametrize("name", ["visivo", "my-tool", "my_tool", "A1", "x" * 64])
def test_good_app_names_are_accepted(name: str) -> None:
    assert check_app_name(name) == name


def test_env_prefix_of_a_dashed_name() -> None:
    assert env_prefix("my-tool") == "MY_TOOL"
    assert env_prefix("visivo") == "VISIVO"


def test_dashed_app_uses_its_own_variables_and_files(env: Env) -> None:
    def run(**extra: str) -> Settings:
        return resolve(
            "my-tool", project_dir=env.project, api_key=KEY, environ=env.environ(**extra)
        )

    assert run().enabled is True
    assert run().config_dir == env.home / ".my-tool"
    assert run(VISIVO_TELEMETRY_DISABLED="1").enabled is True
    off = run(MY_TOOL_TELEMETRY_DISABLED="1")
    assert off.enabled is False
    assert "MY_TOOL_TELEMETRY_DISABLED" in off.reason
    assert run(MY_TOOL_POSTHOG_API_KEY="phc_env").api_key == "phc_env"
    assert run(MY_TOOL_TELEMETRY_DEBUG="1").debug is True
    (env.project / "project.my-tool.yml").write_text("defaults:\n  telemetry_enabled: false\n")
    assert "project file" in run().reason


# -- off means off --


def _apply(env: Env, case: str) -> dict[str, str]:
    """Set up one way of being off; returns the extra environment it needs."""
    if case == "disabled-var":
        return {"VISIVO_TELEMETRY_DISABLED": "1"}
    if case == "do-not-track":
        return {"DO_NOT_TRACK": "true"}
    if case == "project":
        env.write_project("defaults:\n  telemetry_enabled: false\n")
    elif case == "global":
        env.write_global("telemetry_enabled: false\n")
    elif case == "malformed-global":
        env.write_global("{{ nope\n")
    return {}


OFF_CASES = ["disabled-var", "do-not-track", "project", "global", "malformed-global", "no-key"]


def _telemetry_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "telemetry-middleware"]


@pytest.mark.parametrize("case", OFF_CASES)
def test_off_starts_no_thread_and_writes_nothing(env: Env, case: str) -> None:
    extra = _apply(env, case)
    before_files = files_under(env.home)
    before = set(threading.enumerate())
    t = env.telemetry(api_key=None if case == "no-key" else KEY, **extra)
    assert t.enabled is False
    for _ in range(50):
        t.capture("custom_event", {"n": 1})
        t._record_request("GET", 200, 1.5, "/items/{item_id}")
        t._record_request("POST", 404, 0.5, None, "/nope/123", frozenset())
    assert t.flush(0.1) is True
    t.shutdown(0.1)
    assert set(threading.enumerate()) - before == set()  # no new thread (others may end)
    assert _telemetry_threads() == [] or set(_telemetry_threads()) <= before
    assert files_under(env.home) == before_files
    assert not (env.home / ".visivo" / "machine_id").exists()


def test_on_starts_a_thread_and_writes_the_machine_id(env: Env, capture: CaptureServer) -> None:
    """The counterpart of the off cases: their checks would notice an enabled instance."""
    before = set(threading.enumerate())
    t = env.telemetry(host=capture.url)
    try:
        t.capture("custom_event", {"n": 1})
        assert t.flush(5.0) is True
        assert len(set(threading.enumerate()) - before) >= 1
        assert (env.home / ".visivo" / "machine_id").is_file()
    finally:
        t.shutdown(1.0)


_OFF_SCRIPT = r"""
import json, sys, threading
from telemetry_middleware import Telemetry
t = Telemetry("visivo", "1.4.0", project_name="p", project_dir=sys.argv[1],
              api_key=sys.argv[2] or None, host=sys.argv[3])
for _ in range(20):
    t.capture("custom_event", {"n": 1})
    t._record_request("GET", 200, 1.0, "/items/{item_id}")
t.flush(2.0)
result = {"enabled": t.enabled, "posthog": "posthog" in sys.modules,
          "threads": threading.active_count()}
t.shutdown(1.0)
print(json.dumps(result))
"""


def _run_off_script(env: Env, api_key: str, host: str, **extra: str) -> dict[str, object]:
    proc = subprocess.run(
        [PYTHON, "-c", _OFF_SCRIPT, str(env.project), api_key, host],
        env=subprocess_env(env.home, **extra),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    assert proc.stderr == ""
    return result


@pytest.mark.parametrize("case", OFF_CASES)
def test_off_never_imports_posthog_in_a_fresh_process(env: Env, case: str) -> None:
    extra = _apply(env, case)
    before_files = files_under(env.home)
    key = "" if case == "no-key" else KEY
    result = _run_off_script(env, key, "http://127.0.0.1:9", **extra)
    assert result == {"enabled": False, "posthog": False, "threads": 1}
    assert files_under(env.home) == before_files


def test_on_imports_posthog_in_a_fresh_process(env: Env, capture: CaptureServer) -> None:
    """The counterpart: the same script with telemetry on does load posthog."""
    result = _run_off_script(env, KEY, capture.url)
    assert result["enabled"] is True
    assert result["posthog"] is True
    assert capture.wait_for(21, timeout=10)
