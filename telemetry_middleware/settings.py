"""Decide, once and in one place, whether telemetry may run and where it goes.

Every source is read and every opt-out wins: the environment, then the project
file, then the global file. A file that exists but cannot be read, parsed or
understood counts as an opt-out, because when in doubt nothing is sent.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOST = "https://us.i.posthog.com"

_APP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Settings:
    """The resolved outcome: whether events may be built, why, and where they go."""

    app_name: str
    enabled: bool
    reason: str
    debug: bool
    host: str
    api_key: str | None
    config_dir: Path | None

    @property
    def sends(self) -> bool:
        """True when events leave the process over the network."""
        return self.enabled and not self.debug


@dataclass(frozen=True)
class Status:
    """What `Telemetry.status()` reports: the decision and the source behind it."""

    enabled: bool
    reason: str
    debug: bool
    host: str
    dropped_events: int = 0


def check_app_name(app_name: str) -> str:
    """Reject names that would make odd env variables or escape the home directory."""
    if not isinstance(app_name, str) or not _APP_NAME.fullmatch(app_name):
        raise ValueError(
            "app_name must start with a letter and hold only letters, digits, '-' or '_' "
            f"(at most 64 characters), got {app_name!r}"
        )
    return app_name


def env_prefix(app_name: str) -> str:
    """`visivo` -> `VISIVO`, `my-tool` -> `MY_TOOL`."""
    return re.sub(r"[^A-Za-z0-9]", "_", app_name).upper()


def config_dir_for(app_name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """`~/.<app>`, or None when no home directory can be found."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or _account_home()
    return Path(home) / f".{app_name}" if home else None


def _account_home() -> str | None:
    """The home directory from the account database, for processes without $HOME."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir or None
    except Exception:  # no pwd module (Windows) or no entry for this uid
        return None


def global_config_path(app_name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    base = config_dir_for(app_name, environ)
    return None if base is None else base / "config.yml"


def project_config_path(app_name: str, project_dir: str | os.PathLike[str] | None) -> Path:
    return Path(os.getcwd() if project_dir is None else project_dir) / f"project.{app_name}.yml"


def env_disables(value: str | None) -> bool | None:
    """`<APP>_TELEMETRY_DISABLED`: None when unset, else whether it turns telemetry off.

    Unknown values turn it off: a person who set the variable meant something,
    and off is the safe reading.
    """
    if value is None:
        return None
    return value.strip().lower() not in _FALSE


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


class ConfigError(Exception):
    """A config file exists but cannot be used as it stands."""


class NotARegularFile(OSError):
    """A FIFO, socket or device where a config file should be: never opened for a blocking read."""


def _read_regular_file(path: Path) -> str:
    """The text of a regular file; anything else raises instead of blocking or never ending.

    A plain `read_text` on a FIFO waits for a writer forever (and on `/dev/zero` never stops):
    the open does not block with O_NONBLOCK, and the type is checked before any read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(f"{path} is not a regular file")
        return fh.read().decode("utf-8")


def read_yaml_mapping(path: Path) -> dict[str, Any] | None:
    """The file's top-level mapping; None when the file does not exist.

    Raises ConfigError for anything else: unreadable, unparsable, not a mapping.
    A symlink to a missing target counts as an error, not as absent.
    """
    if not os.path.lexists(path):
        return None
    try:
        text = _read_regular_file(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot be read ({type(exc).__name__})") from None
    import yaml  # deferred: import time matters to every host app

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)
    except Exception as exc:  # yaml raises many kinds; all mean unusable
        raise ConfigError(f"cannot be parsed ({type(exc).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"holds a {type(data).__name__}, not a mapping")
    return data


def _flag_opinion(container: Mapping[str, Any], key: str) -> bool | None:
    """`telemetry_enabled` as True/False/None (absent); any other type is an error."""
    if key not in container:
        return None
    value = container[key]
    if isinstance(value, bool):
        return value
    raise ConfigError(f"has {key}: {type(value).__name__}, expected true or false")


def project_file_opinion(path: Path) -> bool | None:
    data = read_yaml_mapping(path)
    if data is None or "defaults" not in data:
        return None
    defaults = data["defaults"]
    if defaults is None:
        return None
    if not isinstance(defaults, dict):
        raise ConfigError(f"has defaults: {type(defaults).__name__}, expected a mapping")
    return _flag_opinion(defaults, "telemetry_enabled")


def global_file_opinion(path: Path) -> bool | None:
    data = read_yaml_mapping(path)
    return None if data is None else _flag_opinion(data, "telemetry_enabled")


def _valid_host(host: str) -> bool:
    lowered = host.lower()
    return (
        lowered.startswith(("http://", "https://"))
        and len(host) <= 2048
        and host.isprintable()
        and " " not in host
    )


def resolve(
    app_name: str,
    *,
    project_dir: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    host: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read every source and return the one decision every event kind obeys."""
    check_app_name(app_name)  # the name becomes a path (~/.<app>) and variable names
    env = os.environ if environ is None else environ
    prefix = env_prefix(app_name)
    config_dir = config_dir_for(app_name, environ)
    debug = _truthy(env.get(f"{prefix}_TELEMETRY_DEBUG"))

    env_key = (env.get(f"{prefix}_POSTHOG_API_KEY") or "").strip()
    key = env_key or (api_key or "").strip() or None
    env_host = (env.get(f"{prefix}_POSTHOG_HOST") or "").strip()
    target = (env_host or (host or "").strip() or DEFAULT_HOST).rstrip("/")

    def off(reason: str) -> Settings:
        return Settings(app_name, False, reason, False, target, key, config_dir)

    disabled_var = f"{prefix}_TELEMETRY_DISABLED"
    if env_disables(env.get(disabled_var)):
        return off(f"disabled by the environment variable {disabled_var}")
    if _truthy(env.get("DO_NOT_TRACK")):
        return off("disabled by the environment variable DO_NOT_TRACK")

    project_path = project_config_path(app_name, project_dir)
    try:
        if project_file_opinion(project_path) is False:
            return off(f"disabled by the project file {project_path} (defaults.telemetry_enabled)")
    except ConfigError as exc:
        return off(f"disabled: the project file {project_path} {exc}")

    global_path = config_dir / "config.yml" if config_dir is not None else None
    if global_path is not None:
        try:
            if global_file_opinion(global_path) is False:
                return off(f"disabled by the global file {global_path} (telemetry_enabled)")
        except ConfigError as exc:
            return off(f"disabled: the global file {global_path} {exc}")

    if not _valid_host(target):
        return off(f"disabled: the PostHog host {target[:80]!r} is not an http(s) URL")
    if debug:
        return Settings(
            app_name,
            True,
            f"debug mode ({prefix}_TELEMETRY_DEBUG): events are printed "
            "to stderr and nothing is sent",
            True,
            target,
            key,
            config_dir,
        )
    if key is None:
        return off(f"disabled: no PostHog API key (pass api_key= or set {prefix}_POSTHOG_API_KEY)")
    return Settings(
        app_name,
        True,
        "enabled: no environment variable, project file or global file opted out",
        False,
        target,
        key,
        config_dir,
    )
