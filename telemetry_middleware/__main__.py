"""`telemetry-middleware`: see and change a tool's telemetry from a shell.

`status`, `enable` and `disable` act for one tool (`--app NAME`); `capture-server`
runs the local endpoint that shows exactly what would leave the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import settings as _settings

COLLECTED = {
    "api_request": "endpoint template (ids replaced), method, status code, duration, project hash",
    "cli_command": "command name, sanitized arguments (values replaced by placeholders), "
    "duration, success, error type (never the message), job/object counts, project hash",
    "new_installation": "sent once when the anonymous machine id is created (never in CI)",
    "every event": "tool version, Python version, OS name and release, architecture, "
    "anonymous machine and session ids, is_ci",
    "never": "IP addresses, hostnames, user names, paths, query strings, headers, cookies, "
    "bodies, error messages, stack traces, argument values, raw project names",
}


# The tool's own default API key lives in its code, out of this command's sight:
# resolve as if it had one, so that the answer reflects the opt-outs a person
# controls rather than always "no API key".
_TOOL_KEY = "<the tool's own key>"


def _resolve(app: str, project_dir: str | None = None) -> _settings.Settings:
    return _settings.resolve(app, project_dir=project_dir, api_key=_TOOL_KEY)


def _status(app: str, project_dir: str | None) -> int:
    resolved = _resolve(app, project_dir)
    prefix = _settings.env_prefix(app)
    print(f"telemetry for {app}: {'enabled' if resolved.enabled else 'disabled'}")
    print(f"  why: {resolved.reason}")
    machine_id = "none yet (created on first enabled use)"
    from .ci import ci_vendor

    vendor = ci_vendor(os.environ)
    if vendor is not None:
        machine_id = f"ci-<new for each process> (CI detected: {vendor}; no id file is used)"
    elif resolved.config_dir is not None:
        try:
            from .identity import MACHINE_ID_FILE, read_machine_id

            found = read_machine_id(resolved.config_dir / MACHINE_ID_FILE)
            machine_id = found or machine_id
        except Exception:
            pass
    print(f"  machine id: {machine_id}")
    print(f"  host: {resolved.host}")
    if resolved.api_key == _TOOL_KEY:
        print(
            f"  api key: the tool's built-in key ({prefix}_POSTHOG_API_KEY is not set; "
            "a tool without one sends nothing)"
        )
    else:
        print(f"  api key: from {prefix}_POSTHOG_API_KEY")
    print(f"  global config: {resolved.config_dir / 'config.yml' if resolved.config_dir else '-'}")
    print(
        f"  opt out: {prefix}_TELEMETRY_DISABLED=1, DO_NOT_TRACK=1, or "
        f"`telemetry-middleware disable --app {app}`"
    )
    print("  what is collected:")
    for name, what in COLLECTED.items():
        print(f"    {name}: {what}")
    return 0


def _set_enabled(app: str, value: bool) -> int:
    path = _settings.global_config_path(app)
    if path is None:
        print("error: no home directory, so there is no global config file", file=sys.stderr)
        return 2
    try:
        data = _settings.read_yaml_mapping(path) or {}
    except _settings.ConfigError as exc:
        print(f"error: {path} {exc}; fix or remove it first (left unchanged)", file=sys.stderr)
        return 2
    import yaml

    data["telemetry_enabled"] = value
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    word = "enabled" if value else "disabled"
    print(f"telemetry {word} for {app} in {path}")
    if value:
        still = _resolve(app)
        if not still.enabled:
            print(f"note: still off: {still.reason}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telemetry-middleware", description="See and control anonymous usage telemetry."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    status = sub.add_parser("status", help="enabled or not, why, and what is sent")
    status.add_argument("--app", required=True)
    status.add_argument("--project-dir", default=None)
    for name in ("enable", "disable"):
        cmd = sub.add_parser(name, help=f"{name} telemetry in the global config file")
        cmd.add_argument("--app", required=True)
    cap = sub.add_parser("capture-server", help="run a local PostHog-compatible endpoint")
    cap.add_argument("--host", default="127.0.0.1")
    cap.add_argument("--port", type=int, default=8765)
    cap.add_argument("--out", default=None, help="append raw events to this JSONL file")
    cap.add_argument("--mode", default="ok", help="answer as a broken host would (tests)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `telemetry-middleware status --app x | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is quiet
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "capture-server":
        from .capture_server import run

        return run(args.host, args.port, args.out, args.mode)
    try:
        _settings.check_app_name(args.app)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "status":
        return _status(args.app, args.project_dir)
    return _set_enabled(args.app, args.cmd == "enable")


if __name__ == "__main__":
    sys.exit(main())
