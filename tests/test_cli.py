"""The `telemetry-middleware` CLI, run as real subprocesses against a temporary HOME."""

from __future__ import annotations

import gzip
import http.client
import json
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, subprocess_env

from telemetry_middleware.identity import load_machine_id


def cli(
    home: Path, *args: str, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "telemetry_middleware", *args],
        env=subprocess_env(home, **extra),
        cwd=cwd or home,
        capture_output=True,
        text=True,
        timeout=30,
    )


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def global_file(home: Path) -> Path:
    return home / ".visivo" / "config.yml"


def seed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


SEEDED = "other_key: 42\nnested:\n  inner: value\n  list: [1, 2, 3]\n"
SEEDED_DATA = {"other_key": 42, "nested": {"inner": "value", "list": [1, 2, 3]}}


# -- status --


def test_status_on_a_fresh_machine(home: Path) -> None:
    result = cli(home, "status", "--app", "visivo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "telemetry for visivo: enabled" in out
    assert "why: enabled" in out
    assert "machine id: none yet" in out
    assert "host: https://us.i.posthog.com" in out
    assert str(home / ".visivo" / "config.yml") in out
    assert "VISIVO_TELEMETRY_DISABLED" in out
    assert "DO_NOT_TRACK" in out
    assert "what is collected" in out
    for event in ("api_request", "cli_command", "new_installation", "every event", "never"):
        assert f"    {event}:" in out
    assert result.stderr == ""
    assert files_under(home) == []  # status only looks


def test_status_shows_the_machine_id_once_it_exists(home: Path) -> None:
    machine = load_machine_id(home / ".visivo", is_ci=False)
    assert machine.created
    result = cli(home, "status", "--app", "visivo")
    assert result.returncode == 0
    assert f"machine id: {machine.value}" in result.stdout
    assert "none yet" not in result.stdout


def test_status_in_ci_shows_the_per_process_id_events_carry(home: Path) -> None:
    machine = load_machine_id(home / ".visivo", is_ci=False)  # a stored id exists, unused in CI
    result = cli(home, "status", "--app", "visivo", CI="true", GITHUB_ACTIONS="true")
    assert result.returncode == 0, result.stderr
    assert "machine id: ci-<new for each process> (CI detected: GitHub Actions" in result.stdout
    assert machine.value not in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"), [("VISIVO_TELEMETRY_DISABLED", "1"), ("DO_NOT_TRACK", "true")]
)
def test_status_names_an_env_opt_out(home: Path, variable: str, value: str) -> None:
    result = cli(home, "status", "--app", "visivo", **{variable: value})
    assert result.returncode == 0
    assert "telemetry for visivo: disabled" in result.stdout
    assert f"why: disabled by the environment variable {variable}" in result.stdout


def test_status_reads_the_project_dir(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    seed(project / "project.visivo.yml", "defaults:\n  telemetry_enabled: false\n")
    result = cli(home, "status", "--app", "visivo", "--project-dir", str(project))
    assert "telemetry for visivo: disabled" in result.stdout
    assert "project file" in result.stdout
    # without --project-dir the working directory is the project
    result = cli(home, "status", "--app", "visivo", cwd=project)
    assert "telemetry for visivo: disabled" in result.stdout
    assert "project file" in result.stdout


def test_status_shows_the_env_host_and_key(home: Path) -> None:
    result = cli(
        home,
        "status",
        "--app",
        "visivo",
        VISIVO_POSTHOG_HOST="http://127.0.0.1:8765/",
        VISIVO_POSTHOG_API_KEY="phc_secret_from_env",
    )
    assert "host: http://127.0.0.1:8765\n" in result.stdout
    assert "api key: from VISIVO_POSTHOG_API_KEY" in result.stdout
    assert "phc_secret_from_env" not in result.stdout


def test_status_reports_a_malformed_global_file(home: Path, global_file: Path) -> None:
    seed(global_file, "telemetry_enabled: [\n")
    result = cli(home, "status", "--app", "visivo")
    assert result.returncode == 0
    assert "telemetry for visivo: disabled" in result.stdout
    assert "cannot be parsed" in result.stdout


def test_status_for_a_dashed_app(home: Path) -> None:
    result = cli(home, "status", "--app", "my-tool", MY_TOOL_TELEMETRY_DISABLED="1")
    assert result.returncode == 0
    assert "telemetry for my-tool: disabled" in result.stdout
    assert "MY_TOOL_TELEMETRY_DISABLED" in result.stdout
    assert str(home / ".my-tool" / "config.yml") in result.stdout


# -- disable / enable --


def test_disable_keeps_other_keys_and_status_follows(home: Path, global_file: Path) -> None:
    seed(global_file, SEEDED)
    result = cli(home, "disable", "--app", "visivo")
    assert result.returncode == 0, result.stderr
    assert str(global_file) in result.stdout
    data = yaml.safe_load(global_file.read_text())
    assert data == {**SEEDED_DATA, "telemetry_enabled": False}
    assert files_under(home) == [".visivo", ".visivo/config.yml"]  # no temp file left

    status = cli(home, "status", "--app", "visivo")
    assert "telemetry for visivo: disabled" in status.stdout
    assert f"why: disabled by the global file {global_file}" in status.stdout


def test_enable_sets_true_and_keeps_other_keys(home: Path, global_file: Path) -> None:
    seed(global_file, SEEDED + "telemetry_enabled: false\n")
    result = cli(home, "enable", "--app", "visivo")
    assert result.returncode == 0, result.stderr
    assert "note" not in result.stdout  # nothing else keeps it off
    data = yaml.safe_load(global_file.read_text())
    assert data == {**SEEDED_DATA, "telemetry_enabled": True}
    assert "telemetry for visivo: enabled" in cli(home, "status", "--app", "visivo").stdout


def test_disable_then_enable_round_trip(home: Path, global_file: Path) -> None:
    assert cli(home, "disable", "--app", "visivo").returncode == 0
    assert yaml.safe_load(global_file.read_text()) == {"telemetry_enabled": False}
    assert cli(home, "enable", "--app", "visivo").returncode == 0
    assert yaml.safe_load(global_file.read_text()) == {"telemetry_enabled": True}


def test_disable_in_an_empty_config_file(home: Path, global_file: Path) -> None:
    seed(global_file, "")
    assert cli(home, "disable", "--app", "visivo").returncode == 0
    assert yaml.safe_load(global_file.read_text()) == {"telemetry_enabled": False}


def test_enable_says_what_still_keeps_it_off(home: Path) -> None:
    result = cli(home, "enable", "--app", "visivo", DO_NOT_TRACK="1")
    assert result.returncode == 0
    assert "still off" in result.stdout
    assert "DO_NOT_TRACK" in result.stdout


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("telemetry_enabled: [\nother: {", "cannot be parsed"),
        ("- a\n- b\n", "holds a list"),
        ("just words\n", "holds a str"),
    ],
    ids=["unparsable", "list", "string"],
)
@pytest.mark.parametrize("command", ["disable", "enable"])
def test_unusable_global_file_is_refused_and_left_alone(
    home: Path, global_file: Path, command: str, text: str, problem: str
) -> None:
    seed(global_file, text)
    before = global_file.read_bytes()
    result = cli(home, command, "--app", "visivo")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error:")
    assert str(global_file) in result.stderr
    assert problem in result.stderr
    assert "unchanged" in result.stderr
    assert global_file.read_bytes() == before
    assert files_under(home) == [".visivo", ".visivo/config.yml"]


def test_directory_as_global_file_is_refused(home: Path, global_file: Path) -> None:
    global_file.mkdir(parents=True)
    result = cli(home, "disable", "--app", "visivo")
    assert result.returncode == 2
    assert "cannot be read" in result.stderr
    assert global_file.is_dir()


def test_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli(blocker / "home", "disable", "--app", "visivo", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot write")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["status", "enable", "disable"])
@pytest.mark.parametrize("app", ["../bad", "", "a b", "x/y"])
def test_bad_app_name_exits_2(home: Path, tmp_path: Path, command: str, app: str) -> None:
    before = files_under(tmp_path)
    result = cli(home, command, "--app", app)
    assert result.returncode == 2
    assert "app_name" in result.stderr
    assert "Traceback" not in result.stderr
    assert files_under(tmp_path) == before


def test_missing_app_is_a_usage_error(home: Path) -> None:
    result = cli(home, "status")
    assert result.returncode == 2
    assert "--app" in result.stderr


def test_console_script_exists_and_helps(home: Path) -> None:
    script = Path(PYTHON).parent / "telemetry-middleware"
    assert script.is_file()
    result = subprocess.run(
        [str(script), "--help"],
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for command in ("status", "enable", "disable", "capture-server"):
        assert command in result.stdout
    status = subprocess.run(
        [str(script), "status", "--app", "visivo"],
        env=subprocess_env(home, VISIVO_TELEMETRY_DISABLED="1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0
    assert "telemetry for visivo: disabled" in status.stdout


# -- capture-server --


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProcess:
    """`capture-server` in a subprocess, with its stdout read line by line."""

    def __init__(self, home: Path, out: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = ["capture-server", "--port", str(self.port), "--out", str(out)]
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "telemetry_middleware", *command],
            env=subprocess_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A runner that started us in the background ignores SIGINT, and children inherit
            # that; give the server back the default so Ctrl-C (SIGINT) stops it cleanly.
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.next_line(15)
        assert "listening on" in first, first
        assert self.url in first

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 10) -> str:
        return self.lines.get(timeout=timeout)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/batch/", body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def server(home: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    out = tmp_path / "events.jsonl"
    out.write_text('{"earlier": "line"}\n')
    proc = ServerProcess(home, out)
    try:
        yield proc
    finally:
        proc.stop()


def make_event(name: str, **props: object) -> dict[str, object]:
    return {
        "event": name,
        "distinct_id": str(uuid.uuid4()),
        "properties": {"visivo_version": "1.4.0", **props},
        "timestamp": "2024-01-01T00:00:00.000Z",
        "uuid": str(uuid.uuid4()),
    }


@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
def test_capture_server_receives_a_posthog_batch(
    server: ServerProcess, tmp_path: Path, use_gzip: bool
) -> None:
    from posthog.request import batch_post

    events = [
        make_event("api_request", method="GET", endpoint="/items/{id}", status_code=200),
        make_event("cli_command", command="run", command_args=["--threads", "<value>"]),
        make_event("new_installation"),
    ]
    batch_post("phc_test", host=server.url, gzip=use_gzip, timeout=10, batch=events)
    lines = [server.next_line() for _ in events]
    assert all(line.startswith("[capture] ") for line in lines)
    assert "api_request" in lines[0]
    assert "GET /items/{id} -> 200" in lines[0]
    assert "cli_command" in lines[1]
    assert "run --threads <value>" in lines[1]
    assert "new_installation" in lines[2]
    with pytest.raises(queue.Empty):
        server.next_line(0.3)  # one line per event, no more

    stored = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(stored[0]) == {"earlier": "line"}  # appended, not overwritten
    assert [json.loads(line) for line in stored[1:]] == events
    assert server.proc.poll() is None


def test_capture_server_survives_malformed_bodies(server: ServerProcess, tmp_path: Path) -> None:
    from posthog.request import batch_post

    json_headers = {"Content-Type": "application/json"}
    bad = [
        (b"not json at all", json_headers),
        (b'{"batch": [1, 2]}', json_headers),
        (b"{}", json_headers),
        (b"\x1f\x8b\x08\x00garbage", {**json_headers, "Content-Encoding": "gzip"}),
        (b"plainly not gzip", {**json_headers, "Content-Encoding": "gzip"}),
        (gzip.compress(b"{not json"), {**json_headers, "Content-Encoding": "gzip"}),
    ]
    for body, headers in bad:
        status, reply = server.post(body, headers)
        assert status == 400, body
        assert json.loads(reply)["type"] == "validation_error"
        assert server.proc.poll() is None

    event = make_event("after_errors")
    status, _ = server.post(json.dumps({"batch": [event]}).encode(), json_headers)
    assert status == 200
    assert "after_errors" in server.next_line()
    batch_post("phc_test", host=server.url, gzip=True, timeout=10, batch=[make_event("again")])
    assert "again" in server.next_line()

    stored = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(stored) == 3  # the earlier line and the two good events only
    assert server.proc.poll() is None
    server.stop()
    assert server.proc.returncode == 0
    assert server.proc.stderr is not None
    assert "Traceback" not in server.proc.stderr.read()


def test_capture_server_receives_a_real_telemetry_instance(
    server: ServerProcess, tmp_path: Path, home: Path
) -> None:
    """End to end: point VISIVO_POSTHOG_HOST at it, as the README tells a person to."""
    script = (
        "from telemetry_middleware import Telemetry\n"
        "t = Telemetry('visivo', '1.4.0', project_name='my-project', api_key='phc_x')\n"
        "t.capture('hello', {'n': 1})\n"
        "t.shutdown(5.0)\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", script],
        env=subprocess_env(home, VISIVO_POSTHOG_HOST=server.url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert done.stdout == done.stderr == ""
    lines = sorted([server.next_line(), server.next_line()])
    assert "hello" in lines[0]
    assert "new_installation" in lines[1]
    deadline = time.monotonic() + 5
    stored: list[str] = []
    while time.monotonic() < deadline and len(stored) < 3:
        stored = (tmp_path / "events.jsonl").read_text().splitlines()
    assert {json.loads(line).get("event") for line in stored[1:]} == {"hello", "new_installation"}
