"""Machine id lifecycle, session id, project hash and the new_installation event."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import COMMON_KEYS, PYTHON, subprocess_env

from telemetry_middleware import Telemetry
from telemetry_middleware.capture_server import CaptureServer
from telemetry_middleware.identity import (
    MACHINE_ID_FILE,
    MachineId,
    load_machine_id,
    new_session_id,
    project_hash,
    read_machine_id,
)


def is_uuid4(text: str) -> bool:
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == text


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """Where ~/.visivo would be; not created, as on a fresh machine (the home exists)."""
    home = tmp_path / "home"
    home.mkdir()
    return home / ".visivo"


# -- machine id: new, reuse, corrupt --


def test_new_machine_id_is_created_and_persisted(config_dir: Path) -> None:
    machine = load_machine_id(config_dir, is_ci=False)
    assert machine == MachineId(machine.value, created=True, persisted=True)
    assert is_uuid4(machine.value)
    path = config_dir / MACHINE_ID_FILE
    assert path.is_file()
    assert path.read_text(encoding="ascii").strip() == machine.value
    assert read_machine_id(path) == machine.value
    # the atomic write leaves no temporary file behind
    assert files_under(config_dir) == [MACHINE_ID_FILE]


def test_machine_id_is_reused_in_the_same_process(config_dir: Path) -> None:
    first = load_machine_id(config_dir, is_ci=False)
    second = load_machine_id(config_dir, is_ci=False)
    assert second == MachineId(first.value, created=False, persisted=True)


_PRINT_ID = r"""
import json, sys
from pathlib import Path
from telemetry_middleware.identity import load_machine_id
m = load_machine_id(Path(sys.argv[1]), is_ci=False)
print(json.dumps({"value": m.value, "created": m.created, "persisted": m.persisted}))
"""


def _id_in_subprocess(config_dir: Path, home: Path) -> dict[str, object]:
    proc = subprocess.run(
        [PYTHON, "-c", _PRINT_ID, str(config_dir)],
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_machine_id_is_reused_across_two_processes(tmp_path: Path, config_dir: Path) -> None:
    first = _id_in_subprocess(config_dir, tmp_path)
    second = _id_in_subprocess(config_dir, tmp_path)
    assert first["created"] is True
    assert second["created"] is False
    assert second["persisted"] is True
    assert first["value"] == second["value"]
    assert is_uuid4(str(first["value"]))


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        b"",
        b"\n",
        b"not-a-uuid-but-exactly-36-chars-long",
        b"{12345678-1234-4234-8234-123456789abc}",
        b"\x00" * 36,
        b"\xff\xfe" * 40,
        b"x" * (10 * 1024 * 1024),
    ],
    ids=["garbage", "empty", "newline", "36-chars", "braces", "nuls", "binary", "10MB"],
)
def test_corrupt_machine_id_is_replaced(config_dir: Path, content: bytes) -> None:
    config_dir.mkdir(parents=True)
    path = config_dir / MACHINE_ID_FILE
    path.write_bytes(content)
    machine = load_machine_id(config_dir, is_ci=False)
    assert is_uuid4(machine.value)
    assert machine.persisted is True
    assert path.read_text(encoding="ascii").strip() == machine.value
    assert load_machine_id(config_dir, is_ci=False).value == machine.value


def test_valid_id_with_surrounding_whitespace_is_kept(config_dir: Path) -> None:
    config_dir.mkdir(parents=True)
    known = "0b1e4a8c-7d2f-4e6a-9c3b-5f8d2a1e7b40"
    (config_dir / MACHINE_ID_FILE).write_text(f"  {known}\n\n")
    assert load_machine_id(config_dir, is_ci=False) == MachineId(known, False, True)


@pytest.mark.parametrize("target_text", ["0b1e4a8c-7d2f-4e6a-9c3b-5f8d2a1e7b40\n", "precious\n"])
def test_symlinked_machine_id_is_not_followed(
    tmp_path: Path, config_dir: Path, target_text: str
) -> None:
    config_dir.mkdir(parents=True)
    target = tmp_path / "elsewhere.txt"
    target.write_text(target_text)
    path = config_dir / MACHINE_ID_FILE
    path.symlink_to(target)
    machine = load_machine_id(config_dir, is_ci=False)
    assert is_uuid4(machine.value)
    assert machine.value not in target_text  # the link's target was not read as the id
    assert target.read_text() == target_text  # nor written through the link
    if machine.persisted:  # persisted means a regular file of our own, not the link
        assert not path.is_symlink()
        assert read_machine_id(path) == machine.value


def test_dangling_symlink_machine_id_is_not_followed(tmp_path: Path, config_dir: Path) -> None:
    config_dir.mkdir(parents=True)
    target = tmp_path / "not-there" / "machine_id"
    (config_dir / MACHINE_ID_FILE).symlink_to(target)
    machine = load_machine_id(config_dir, is_ci=False)
    assert is_uuid4(machine.value)
    assert not target.exists()
    assert not target.parent.exists()


def test_directory_at_the_machine_id_path_gives_a_per_process_id(config_dir: Path) -> None:
    (config_dir / MACHINE_ID_FILE).mkdir(parents=True)
    machine = load_machine_id(config_dir, is_ci=False)
    assert machine == MachineId(machine.value, created=False, persisted=False)
    assert is_uuid4(machine.value)


# -- machine id: CI, unwritable or missing home --


def test_ci_gets_a_fresh_unwritten_ci_id(config_dir: Path) -> None:
    ids = [load_machine_id(config_dir, is_ci=True) for _ in range(3)]
    for machine in ids:
        assert machine.value.startswith("ci-")
        assert is_uuid4(machine.value[3:])
        assert machine.created is False
        assert machine.persisted is False
    assert len({m.value for m in ids}) == 3
    assert not config_dir.exists()


def test_ci_ignores_an_existing_machine_id(config_dir: Path) -> None:
    stored = load_machine_id(config_dir, is_ci=False).value
    machine = load_machine_id(config_dir, is_ci=True)
    assert machine.value.startswith("ci-")
    assert stored not in machine.value
    assert (config_dir / MACHINE_ID_FILE).read_text().strip() == stored


def test_unwritable_home_gives_a_per_process_id(tmp_path: Path) -> None:
    # Running as root, chmod cannot make a directory unwritable: a HOME below a regular
    # file cannot be created by anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config_dir = blocker / "home" / ".visivo"
    first = load_machine_id(config_dir, is_ci=False)
    second = load_machine_id(config_dir, is_ci=False)
    for machine in (first, second):
        assert machine.created is False
        assert machine.persisted is False
        assert is_uuid4(machine.value)
    assert first.value != second.value
    assert blocker.read_text() == "not a directory"


def test_no_home_gives_a_per_process_id() -> None:
    machine = load_machine_id(None, is_ci=False)
    assert machine == MachineId(machine.value, created=False, persisted=False)
    assert is_uuid4(machine.value)


def test_unwritable_home_still_sends_events(tmp_path: Path, capture: CaptureServer) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    t = Telemetry(
        "visivo",
        "1.4.0",
        project_dir=tmp_path,
        api_key="phc_test",
        host=capture.url,
        flush_interval=0.05,
        environ={"HOME": str(blocker / "home"), "CI": "false"},
    )
    try:
        assert t.enabled is True
        t.capture("still_works")
        assert t.flush(5.0) is True
    finally:
        t.shutdown(1.0)
    events = capture.wait_for(1)
    assert [e["event"] for e in events] == ["still_works"]  # no new_installation either
    assert is_uuid4(events[0]["distinct_id"])


# -- machine id: concurrent creation --


def test_concurrent_creation_by_threads_agrees_on_one_id(config_dir: Path) -> None:
    for _ in range(20):  # the race window is small: try it many times
        if config_dir.exists():
            (config_dir / MACHINE_ID_FILE).unlink()
        barrier = threading.Barrier(8)
        results: list[MachineId] = []

        def create(
            barrier: threading.Barrier = barrier, results: list[MachineId] = results
        ) -> None:
            barrier.wait()
            results.append(load_machine_id(config_dir, is_ci=False))

        threads = [threading.Thread(target=create) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        stored = (config_dir / MACHINE_ID_FILE).read_text().strip()
        assert {m.value for m in results} == {stored}
        assert sum(m.created for m in results) == 1
        assert all(m.persisted for m in results)


_RACE = r"""
import json, sys, time
from pathlib import Path
from telemetry_middleware.identity import load_machine_id
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
m = load_machine_id(Path(sys.argv[1]), is_ci=False)
print(json.dumps({"value": m.value, "created": m.created}))
"""


def test_concurrent_creation_by_processes_agrees_on_one_id(
    tmp_path: Path, config_dir: Path
) -> None:
    start = time.time() + 1.5  # every child is up and waiting by then
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", _RACE, str(config_dir), repr(start)],
            env=subprocess_env(tmp_path),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [json.loads(proc.communicate(timeout=30)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    stored = (config_dir / MACHINE_ID_FILE).read_text().strip()
    assert {r["value"] for r in results} == {stored}
    assert sum(r["created"] for r in results) == 1


# -- project hash --

VISIVO_MY_PROJECT = "817938cb1fe1fd73"  # sha256("visivo-telemetry-v1:my-project")[:16]


def test_project_hash_test_vector() -> None:
    expected = hashlib.sha256(b"visivo-telemetry-v1:my-project").hexdigest()[:16]
    assert expected == VISIVO_MY_PROJECT
    assert project_hash("visivo", "my-project") == VISIVO_MY_PROJECT


def test_project_hash_salt_follows_the_app_name() -> None:
    expected = hashlib.sha256(b"my-tool-telemetry-v1:my-project").hexdigest()[:16]
    assert project_hash("my-tool", "my-project") == expected


def test_custom_salt_changes_the_hash() -> None:
    custom = project_hash("visivo", "my-project", salt="custom-salt")
    assert custom == hashlib.sha256(b"custom-salt:my-project").hexdigest()[:16]
    assert custom == "5741ec21a2cd8536"
    assert custom != VISIVO_MY_PROJECT


@pytest.mark.parametrize("name", ["my-project", "", "x" * 10_000, "projé 🚀", "a:b", "\udc80"])
def test_project_hash_shape(name: str) -> None:
    value = project_hash("visivo", name)
    assert re.fullmatch(r"[0-9a-f]{16}", value)
    assert project_hash("visivo", name) == value


def test_project_hash_differs_between_projects() -> None:
    assert project_hash("visivo", "my-project") != project_hash("visivo", "my-project2")


def test_telemetry_hashes_with_its_salt(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "CI": "false"}
    t = Telemetry("visivo", "1", "my-project", tmp_path, api_key="k", environ=environ)
    assert t.project_hash == VISIVO_MY_PROJECT
    assert t.hash_project("my-project") == VISIVO_MY_PROJECT
    salted = Telemetry(
        "visivo",
        "1",
        "my-project",
        tmp_path,
        api_key="k",
        project_salt="custom-salt",
        environ=environ,
    )
    assert salted.project_hash == "5741ec21a2cd8536"
    assert salted.hash_project("my-project") == "5741ec21a2cd8536"
    assert (
        Telemetry("visivo", "1", None, tmp_path, api_key="k", environ=environ).project_hash is None
    )


# -- session id --


def test_session_ids_are_fresh_uuid4s(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "CI": "false"}
    a = Telemetry("visivo", "1", project_dir=tmp_path, api_key="k", environ=environ)
    b = Telemetry("visivo", "1", project_dir=tmp_path, api_key="k", environ=environ)
    assert is_uuid4(a.session_id)
    assert is_uuid4(b.session_id)
    assert a.session_id != b.session_id
    assert new_session_id() != new_session_id()
    assert files_under(tmp_path) == []  # constructing writes nothing


def test_session_id_differs_between_processes(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom telemetry_middleware import Telemetry\n"
        "print(Telemetry('visivo', '1', project_dir=sys.argv[1], api_key='k').session_id)"
    )
    ids = [
        subprocess.run(
            [PYTHON, "-c", script, str(tmp_path)],
            env=subprocess_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert all(is_uuid4(i) for i in ids)
    assert ids[0] != ids[1]


def test_events_carry_the_session_id(telemetry: Telemetry, capture: CaptureServer) -> None:
    telemetry.capture("one")
    assert telemetry.flush(5.0)
    events = capture.wait_for(2)
    assert {e["properties"]["session_id"] for e in events} == {telemetry.session_id}


# -- new_installation --


def test_first_use_sends_one_new_installation(
    telemetry: Telemetry, capture: CaptureServer, home: Path
) -> None:
    telemetry.capture("first_event", {"n": 1})
    assert telemetry.flush(5.0)
    events = capture.wait_for(2)
    names = [e["event"] for e in events]
    assert names.count("new_installation") == 1
    assert sorted(names) == ["first_event", "new_installation"]
    install = next(e for e in events if e["event"] == "new_installation")
    assert set(install["properties"]) == COMMON_KEYS
    assert install["properties"]["visivo_version"] == "1.4.0"
    assert install["properties"]["is_ci"] is False
    assert install["properties"]["$geoip_disable"] is True
    machine_id = (home / ".visivo" / MACHINE_ID_FILE).read_text().strip()
    assert {e["distinct_id"] for e in events} == {machine_id}

    second = Telemetry(
        "visivo",
        "1.4.0",
        project_dir=home,
        api_key="phc_test",
        host=capture.url,
        flush_interval=0.05,
    )
    try:
        second.capture("second_event")
        assert second.flush(5.0)
    finally:
        second.shutdown(1.0)
    later = capture.wait_for(3)[len(events) :]
    assert [e["event"] for e in later] == ["second_event"]
    assert later[0]["distinct_id"] == machine_id


def test_new_installation_is_sent_once_per_process_too(
    telemetry: Telemetry, capture: CaptureServer
) -> None:
    for i in range(5):
        telemetry.capture("tick", {"i": i})
        telemetry._record_request("GET", 200, 1.0, "/items/{item_id}")
        assert telemetry.flush(5.0)
    names = [e["event"] for e in capture.wait_for(11)]
    assert names.count("new_installation") == 1
    assert len(names) == 11


def test_ci_sends_no_new_installation_and_writes_nothing(
    home: Path, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    t = Telemetry(
        "visivo",
        "1.4.0",
        project_dir=home,
        api_key="phc_test",
        host=capture.url,
        flush_interval=0.05,
    )
    try:
        t.capture("in_ci")
        assert t.flush(5.0)
    finally:
        t.shutdown(1.0)
    events = capture.wait_for(1)
    assert [e["event"] for e in events] == ["in_ci"]
    distinct_id = events[0]["distinct_id"]
    assert distinct_id.startswith("ci-")
    assert is_uuid4(distinct_id[3:])
    assert events[0]["properties"]["is_ci"] is True
    assert files_under(home) == []
