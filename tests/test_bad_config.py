"""Bad configuration never breaks the host, and always ends the documented way.

Each case arranges a broken situation on disk (a config file that cannot be used, a home that
cannot be written or does not exist, a machine id file that is garbage or points elsewhere) and
runs, against a fresh copy of it, both hosts a tool has:

* the FastAPI example in-process, built the way the example builds it (`default_telemetry()`
  reads the environment and the working directory), serving a real request through
  Starlette's TestClient, lifespan included;
* the example CLI as a process: `python -m examples.cli_app.cli run --threads 2`.

Both must work as if telemetry did not exist: the same response, exit code 0, the normal output,
nothing on stdout or stderr beyond it, and never a hang (every run has a timeout). Then the
outcome must be the one DESIGN.md documents:

* a config file that exists but cannot be used is an opt-out: not one request reaches the
  capture endpoint, nothing is written, and `status()` (and `telemetry-middleware status`) says
  which file and why;
* a home that is missing, unset or cannot be written gives a per-process id: events are still
  sent, no `new_installation`, and nothing is written (in particular no home is created);
* a machine id file holding garbage (or anything that is not a regular file with a UUID) gets a
  new id: written, sent with `new_installation`; a symlink is never followed and its target is
  left as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, ROOT, subprocess_env

from telemetry_middleware import Telemetry
from telemetry_middleware.capture_server import CaptureServer

with warnings.catch_warnings():
    # Starlette >= 1.x would rather drive its TestClient with `httpx2`; `httpx` still works.
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*httpx2")
    from starlette.testclient import TestClient

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the examples package lives at the repository root

import examples.fastapi_app.app as fastapi_example

CLI = [PYTHON, "-m", "examples.cli_app.cli", "run", "--threads", "2"]
STATUS = [PYTHON, "-m", "telemetry_middleware", "status", "--app", "visivo"]
# An enabled CLI hands its events to a detached sender at exit; they arrive within a few hundred
# ms (the enabled cases below show it). This long without a request means none was sent.
QUIET_PERIOD = 1.0
RUN_TIMEOUT = 30.0
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

OPT_OUT = "opt-out"
PER_PROCESS = "per-process id"
NEW_ID = "new id"


# -- arranging a broken situation --


@dataclass
class Layout:
    """Where a run finds its home (None: HOME unset) and its project, and what to check after."""

    base: Path
    home: Path | None
    project: Path
    no_account: bool = False  # the account database has no home for this uid either
    immutable: list[Path] = field(default_factory=list)  # to make writable again afterwards
    after: Callable[[Layout], None] | None = None

    @property
    def config_dir(self) -> Path | None:
        return None if self.home is None else self.home / ".visivo"


def _layout(base: Path) -> Layout:
    home, project = base / "home", base / "project"
    home.mkdir(parents=True)
    project.mkdir()
    return Layout(base, home, project)


def _config_file(layout: Layout, where: str) -> Path:
    if where == "project":
        return layout.project / "project.visivo.yml"
    assert layout.config_dir is not None
    layout.config_dir.mkdir(exist_ok=True)
    return layout.config_dir / "config.yml"


def _write(text: str | bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(text.encode() if isinstance(text, str) else text)

    return make


def _make_directory(path: Path) -> None:
    path.mkdir()
    (path / "config.yml").write_text("telemetry_enabled: true\n")


def _make_dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "gone.yml")


def _make_symlink_loop(path: Path) -> None:
    path.symlink_to(path)


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)  # a read would wait for a writer forever


def _make_endless(path: Path) -> None:
    path.symlink_to("/dev/zero")  # a read would never end


# (id, what to put at the path, what the reason must say after "<where> file <path>")
BAD_FILES: list[tuple[str, Callable[[Path], None], str]] = [
    ("malformed-yaml", _write("telemetry_enabled: [true\n  nope: {\n"), "cannot be parsed"),
    ("tab-indented-yaml", _write("defaults:\n\ttelemetry_enabled: true\n"), "cannot be parsed"),
    ("yaml-list", _write("- telemetry_enabled: true\n- defaults: {}\n"), "holds a list"),
    ("yaml-scalar", _write("telemetry is fine\n"), "holds a str"),
    ("invalid-utf8", _write(b"telemetry_enabled: true # \xff\xfe\n"), "cannot be read"),
    ("directory", _make_directory, "cannot be read"),
    ("dangling-symlink", _make_dangling_symlink, "cannot be read"),
    ("symlink-loop", _make_symlink_loop, "cannot be read"),
    ("fifo", _make_fifo, "cannot be read"),
    ("dev-zero", _make_endless, "cannot be read"),
]
WRONG_SHAPES = [
    ("project", "defaults: [telemetry_enabled]\n", "has defaults: list"),
    ("project", "defaults:\n  telemetry_enabled: 'no'\n", "has telemetry_enabled: str"),
    ("global", "telemetry_enabled: 0\n", "has telemetry_enabled: int"),
]


@dataclass(frozen=True)
class Case:
    id: str
    arrange: Callable[[Path], Layout]
    outcome: str
    reason: tuple[str, ...] = ()  # fragments `status().reason` must contain (opt-outs)


def _bad_file_case(where: str, name: str, make: Callable[[Path], None], says: str) -> Case:
    def arrange(base: Path) -> Layout:
        layout = _layout(base)
        make(_config_file(layout, where))
        return layout

    return Case(f"{where}-{name}", arrange, OPT_OUT, ("disabled", f"{where} file", says))


def _wrong_shape_case(where: str, text: str, says: str) -> Case:
    return _bad_file_case(where, "wrong-shape-" + says.split()[-1], _write(text), says)


def _missing_home(base: Path) -> Layout:
    layout = _layout(base)
    layout.home = base / "no-such-home"
    layout.after = _assert_absent(layout.home)
    return layout


def _home_under_a_file(base: Path) -> Layout:
    layout = _layout(base)
    (base / "a-file").write_text("not a directory\n")
    layout.home = base / "a-file" / "home"
    return layout


def _home_unset(base: Path) -> Layout:
    layout = _layout(base)
    layout.home, layout.no_account = None, True
    return layout


def _chattr(path: Path, flag: str) -> bool:
    """Root ignores permission bits; the immutable attribute stops even root from writing."""
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    done = subprocess.run([chattr, flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0


def _read_only(path: Path, layout: Layout) -> None:
    if not _chattr(path, "+i"):
        pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
    probe = path / "probe"
    try:
        probe.write_text("")
    except OSError:
        layout.immutable.append(path)
        return
    probe.unlink()
    _chattr(path, "-i")
    pytest.skip("chattr +i did not make the directory read-only")


def _read_only_home(base: Path) -> Layout:
    layout = _layout(base)
    assert layout.home is not None
    _read_only(layout.home, layout)
    return layout


def _read_only_config_dir(base: Path) -> Layout:
    layout = _layout(base)
    assert layout.config_dir is not None
    layout.config_dir.mkdir()
    (layout.config_dir / "config.yml").write_text("telemetry_enabled: true\n")
    _read_only(layout.config_dir, layout)
    return layout


def _machine_id_path(layout: Layout) -> Path:
    assert layout.config_dir is not None
    layout.config_dir.mkdir(exist_ok=True)
    return layout.config_dir / "machine_id"


def _machine_id_directory(base: Path) -> Layout:
    layout = _layout(base)
    _machine_id_path(layout).mkdir()
    return layout


def _machine_id_holding(content: bytes) -> Callable[[Path], Layout]:
    def arrange(base: Path) -> Layout:
        layout = _layout(base)
        _machine_id_path(layout).write_bytes(content)
        return layout

    return arrange


def _machine_id_fifo(base: Path) -> Layout:
    layout = _layout(base)
    os.mkfifo(_machine_id_path(layout))
    return layout


def _machine_id_symlink_elsewhere(base: Path) -> Layout:
    """The worst case: the link points at a valid id; adopting it would follow the link."""
    layout = _layout(base)
    victim = base / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_text(f"{uuid.uuid4()}\n")
    before = victim.read_bytes()
    _machine_id_path(layout).symlink_to(victim)

    def after(layout: Layout) -> None:
        assert victim.read_bytes() == before, "the symlink's target was written"
        assert _machine_id(layout) != before.decode().strip(), "the symlink was followed"

    layout.after = after
    return layout


def _machine_id_dangling_symlink(base: Path) -> Layout:
    layout = _layout(base)
    target = base / "elsewhere" / "created-through-the-link"
    _machine_id_path(layout).symlink_to(target)
    layout.after = _assert_absent(target)
    return layout


def _assert_absent(path: Path) -> Callable[[Layout], None]:
    def after(layout: Layout) -> None:
        assert not os.path.lexists(path), f"{path} was created"

    return after


CASES = [
    *(_bad_file_case(w, n, m, s) for w in ("project", "global") for n, m, s in BAD_FILES),
    *(_wrong_shape_case(w, t, s) for w, t, s in WRONG_SHAPES),
    Case("home-missing", _missing_home, PER_PROCESS),
    Case("home-under-a-regular-file", _home_under_a_file, PER_PROCESS),
    Case("home-unset-and-no-account", _home_unset, PER_PROCESS),
    Case("home-read-only", _read_only_home, PER_PROCESS),
    Case("config-dir-read-only", _read_only_config_dir, PER_PROCESS),
    Case("machine-id-is-a-directory", _machine_id_directory, PER_PROCESS),
    Case("machine-id-garbage", _machine_id_holding(b"not-a-uuid\x00\xff\n" * 40), NEW_ID),
    Case("machine-id-empty", _machine_id_holding(b""), NEW_ID),
    Case("machine-id-uuid-and-junk", _machine_id_holding(f"{uuid.uuid4()}junk".encode()), NEW_ID),
    Case("machine-id-fifo", _machine_id_fifo, NEW_ID),
    Case("machine-id-symlink-elsewhere", _machine_id_symlink_elsewhere, NEW_ID),
    Case("machine-id-dangling-symlink", _machine_id_dangling_symlink, NEW_ID),
]


# -- observing --


def snapshot(base: Path) -> dict[str, str]:
    """Every entry under `base`, never following links nor opening anything but regular files."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(base, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            key = str(path.relative_to(base))
            if stat.S_ISLNK(mode):
                found[key] = "link -> " + os.readlink(path)
            elif stat.S_ISREG(mode):
                found[key] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[key] = "dir" if stat.S_ISDIR(mode) else f"special {stat.S_IFMT(mode):o}"
    return found


def _machine_id(layout: Layout) -> str:
    assert layout.config_dir is not None
    path = layout.config_dir / "machine_id"
    assert stat.S_ISREG(path.lstat().st_mode), "the machine id is not a regular file now"
    return path.read_text().strip()


def _events(capture: CaptureServer, start: int) -> list[dict[str, Any]]:
    return capture.wait_for(0, timeout=0)[start:]


def _wait_for_events(capture: CaptureServer, start: int, kind: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        events = _events(capture, start)
        if any(e["event"] == kind for e in events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event arrived: {_events(capture, start)}")


def _check_events(
    events: list[dict[str, Any]], kind: str, count: int, case: Case, layout: Layout
) -> str:
    """The events of one run, as the outcome says; returns the distinct id they carry."""
    names = sorted(e["event"] for e in events)
    expected = [kind] * count + (["new_installation"] if case.outcome == NEW_ID else [])
    assert names == sorted(expected)  # a per-process id is no installation
    ids = {e["distinct_id"] for e in events}
    assert len(ids) == 1, ids
    distinct_id = ids.pop()
    assert _UUID4.fullmatch(distinct_id), distinct_id
    if case.outcome == NEW_ID:
        assert _machine_id(layout) == distinct_id  # the new id was written, and is the one sent
    return distinct_id


# -- running both hosts --


@dataclass
class Run:
    layout: Layout
    snapshot_before: dict[str, str]


@pytest.fixture
def arrange(tmp_path: Path) -> Iterator[Callable[[Case, str], Run]]:
    """`arrange(case, label)`: a fresh copy of the case's situation under tmp_path/label."""
    made: list[Layout] = []

    def make(case: Case, label: str) -> Run:
        layout = case.arrange(tmp_path / label)
        made.append(layout)
        return Run(layout, snapshot(layout.base))

    yield make
    for layout in made:
        for path in layout.immutable:
            _chattr(path, "-i")


def _no_account_site(tmp_path: Path) -> Path:
    """A sitecustomize that makes the account database know no home for this uid."""
    site = tmp_path / "no-account-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import pwd

            def _no_entry(uid):
                raise KeyError(f"getpwuid(): uid not found: {uid}")

            pwd.getpwuid = _no_entry
            """
        )
    )
    return site


def run_cli(layout: Layout, capture: CaptureServer, tmp_path: Path, command: list[str]) -> Any:
    env = subprocess_env(layout.home or tmp_path, VISIVO_POSTHOG_HOST=capture.url)
    if layout.home is None:
        del env["HOME"]
    if layout.no_account:
        env["PYTHONPATH"] = f"{_no_account_site(tmp_path)}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run(
        command,
        cwd=layout.project,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def run_app(
    layout: Layout, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[Telemetry, list[tuple[int, Any]]]:
    """The FastAPI example in this process, as its module builds it, with a real request."""
    import pwd

    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("VISIVO_") or name == "DO_NOT_TRACK":
                patch.delenv(name)
        patch.setenv("CI", "false")
        patch.setenv("VISIVO_POSTHOG_HOST", capture.url)
        if layout.home is None:
            patch.delenv("HOME", raising=False)
        else:
            patch.setenv("HOME", str(layout.home))
        if layout.no_account:

            def no_entry(uid: int) -> Any:
                raise KeyError(uid)

            patch.setattr(pwd, "getpwuid", no_entry)
        patch.chdir(layout.project)
        outcome: dict[str, Any] = {}

        def serve() -> None:
            telemetry = fastapi_example.default_telemetry()
            outcome["telemetry"] = telemetry
            with TestClient(fastapi_example.create_app(telemetry)) as client:
                answers = [client.get("/api/v1/projects/42"), client.get("/health")]
                outcome["answers"] = [(r.status_code, r.json()) for r in answers]
                telemetry.flush(5.0)
            # Leaving the client ran the lifespan's shutdown: telemetry.shutdown(1.0).

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        worker.join(RUN_TIMEOUT)
        assert not worker.is_alive(), "the app hung"
    assert "answers" in outcome, "the app failed"
    return outcome["telemetry"], outcome["answers"]


EXPECTED_ANSWERS = [
    (200, {"id": 42, "name": "project 42"}),
    (200, {"status": "ok", "started": True}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_configuration(
    case: Case,
    arrange: Callable[[Case, str], Run],
    capture: CaptureServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # (b) The example CLI, as a process.
    cli = arrange(case, "cli")
    result = run_cli(cli.layout, capture, tmp_path, CLI)
    cli_exited = time.monotonic()
    assert (result.returncode, result.stdout, result.stderr) == (0, "ran 2 jobs\n", "")
    cli_id = None
    if case.outcome != OPT_OUT:
        cli_events = _wait_for_events(capture, 0, "cli_command")
        cli_id = _check_events(cli_events, "cli_command", 1, case, cli.layout)

    # (a) The FastAPI example, in this process.
    app = arrange(case, "app")
    mark = len(_events(capture, 0))
    capfd.readouterr()
    telemetry, answers = run_app(app.layout, capture, monkeypatch)
    assert answers == EXPECTED_ANSWERS
    assert capfd.readouterr() == ("", "")  # telemetry printed nothing, whatever happened
    status = telemetry.status()

    if case.outcome == OPT_OUT:
        assert status.enabled is False
        for fragment in case.reason:
            assert fragment in status.reason, status.reason
        shown = run_cli(cli.layout, capture, tmp_path, STATUS)
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        why = next(line for line in shown.stdout.splitlines() if line.strip().startswith("why:"))
        for fragment in case.reason:
            assert fragment in why, why
        time.sleep(max(0.0, QUIET_PERIOD - (time.monotonic() - cli_exited)))
        assert capture.requests == 0, _events(capture, 0)
    else:
        assert status.enabled is True, status.reason
        app_id = _check_events(_events(capture, mark), "api_request", 2, case, app.layout)
        if case.outcome == PER_PROCESS:
            assert cli_id != app_id  # one id per process, never stored

    for run in (cli, app):
        # Nothing is written, but for a replaced machine id (and no temporary file is left).
        changed = {"home/.visivo/machine_id"} if case.outcome == NEW_ID else set()
        after = {k: v for k, v in snapshot(run.layout.base).items() if k not in changed}
        before = {k: v for k, v in run.snapshot_before.items() if k not in changed}
        assert after == before, "something else was written"
        if run.layout.after is not None:
            run.layout.after(run.layout)
