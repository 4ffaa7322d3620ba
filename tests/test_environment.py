"""Common properties: the exact key set, their values and types, and the is_ci flag.

These machines run in Docker (`/.dockerenv` exists), so every case states CI explicitly.
"""

from __future__ import annotations

import platform
import sys

import pytest
from conftest import METADATA_KEYS

from telemetry_middleware.ci import detect_ci
from telemetry_middleware.environment import common_properties, platform_name

SESSION = "5b0c2f4e-8d1a-4c3b-9e7f-0a1b2c3d4e5f"
VISIVO_KEYS = METADATA_KEYS


def props(
    environ: dict[str, str] | None = None, app: str = "visivo", version: str = "1.4.0"
) -> dict[str, object]:
    return common_properties(app, version, SESSION, {"CI": "false"} if environ is None else environ)


def test_exact_key_set_for_visivo() -> None:
    assert set(props()) == VISIVO_KEYS


def test_version_key_follows_the_app_name() -> None:
    keys = set(props(app="othertool"))
    assert "othertool_version" in keys
    assert "visivo_version" not in keys
    assert keys == (VISIVO_KEYS - {"visivo_version"}) | {"othertool_version"}


def test_values_and_types() -> None:
    p = props()
    assert p["visivo_version"] == "1.4.0"
    assert p["python_version"] == platform.python_version()
    assert p["session_id"] == SESSION
    assert p["platform_version"] == (platform.release() or "unknown")
    assert p["architecture"] == (platform.machine() or "unknown")
    assert p["is_ci"] is False
    for key, value in p.items():
        if key == "is_ci":
            assert isinstance(value, bool)
        else:
            assert isinstance(value, str), key
            assert value, key


def test_platform_is_one_of_the_documented_names() -> None:
    assert props()["platform"] in {"linux", "darwin", "windows"}
    assert platform_name() in {"linux", "darwin", "windows"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="this machine is Linux")
def test_platform_here_is_linux() -> None:
    assert props()["platform"] == "linux"


@pytest.mark.parametrize(
    ("sys_platform", "expected"),
    [("linux", "linux"), ("darwin", "darwin"), ("win32", "windows"), ("cygwin", "windows")],
)
def test_platform_names(monkeypatch: pytest.MonkeyPatch, sys_platform: str, expected: str) -> None:
    monkeypatch.setattr(sys, "platform", sys_platform)
    assert platform_name() == expected


def test_app_version_is_bounded_and_printable() -> None:
    assert props(version="9" * 500)["visivo_version"] == "9" * 64
    assert props(version="1.0\n/home/alice")["visivo_version"] == "unknown"


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_is_ci_follows_ci_true(value: str) -> None:
    assert props({"CI": value})["is_ci"] is True


@pytest.mark.parametrize("value", ["false", "0", "no", "FALSE"])
def test_is_ci_false_whatever_else_is_detected(value: str) -> None:
    # /.dockerenv exists on these machines and GITHUB_ACTIONS would be CI: CI=false wins.
    assert props({"CI": value, "GITHUB_ACTIONS": "true"})["is_ci"] is False


def test_is_ci_from_a_vendor_variable() -> None:
    assert props({"GITHUB_ACTIONS": "true"})["is_ci"] is True


def test_is_ci_without_ci_variables_matches_detection() -> None:
    # Here the result depends on the machine (Docker counts as CI): it must agree with detect_ci.
    assert props({})["is_ci"] is detect_ci({})


def test_nothing_identifying_is_in_the_values() -> None:
    import getpass
    import os
    import socket

    text = repr(props())
    for secret in {socket.gethostname(), os.getcwd(), os.path.expanduser("~")}:
        if len(secret) > 3:
            assert secret not in text
    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    if len(user) > 3:
        assert user not in text
