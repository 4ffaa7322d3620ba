"""Anonymous identifiers: the machine id file, the session id and the project hash.

Nothing here identifies a person: the machine id is random, and the project
name only ever leaves as a salted, truncated hash.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

MACHINE_ID_FILE = "machine_id"


@dataclass(frozen=True)
class MachineId:
    """The id and how it came about; `created` is True only for a newly persisted id."""

    value: str
    created: bool
    persisted: bool


def project_hash(app_name: str, project_name: str, salt: str | None = None) -> str:
    """First 16 hex chars of sha256("<salt>:<name>"); the salt defaults to "<app>-telemetry-v1"."""
    prefix = f"{app_name}-telemetry-v1" if salt is None else salt
    return hashlib.sha256(f"{prefix}:{project_name}".encode("utf-8", "surrogatepass")).hexdigest()[
        :16
    ]


def new_session_id() -> str:
    return str(uuid.uuid4())


def _parse(text: str) -> str | None:
    """A canonical UUID string, or None for anything else (empty, garbage, huge)."""
    candidate = text.strip()
    if len(candidate) != 36:
        return None
    try:
        return str(uuid.UUID(candidate))
    except ValueError:
        return None


def read_machine_id(path: Path) -> str | None:
    """Read without following symlinks: a link elsewhere is treated as corrupt.

    So is anything but a regular file: opening a FIFO for reading would otherwise wait for a
    writer forever (O_NONBLOCK makes the open return at once; the type is checked before reading).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _parse(fh.read(128).decode("ascii", "replace"))
    except OSError:
        return None


def _write_new(directory: Path, path: Path, value: str) -> str | None:
    """Atomically put `value` at `path`; returns the id that ends up there, or None.

    Only `~/.<app>` itself is created, never a missing home above it: HOME pointing nowhere
    (`/nonexistent` is a common one) means a per-process id, not a new directory tree.
    """
    directory.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".machine_id.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(value + "\n")
        try:
            os.link(tmp, path)  # fails if the path exists: created meanwhile, or corrupt
            return value
        except FileExistsError:
            current = read_machine_id(path)
            if current is not None:
                return current  # another thread or process created it first: use theirs
            os.replace(tmp, path)  # corrupt, empty, a symlink: replace it (never follow)
            return value
        except OSError:  # file systems without hard links
            os.replace(tmp, path)
            return value
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_machine_id(config_dir: Path | None, is_ci: bool) -> MachineId:
    """The persistent id from `<config_dir>/machine_id`, creating it on first use.

    In CI every process gets a fresh `ci-` id that is never written, so CI runs
    are not counted as installations. Any file-system trouble gives a
    per-process id instead of an error.
    """
    if is_ci:
        return MachineId(f"ci-{uuid.uuid4()}", created=False, persisted=False)
    if config_dir is None:
        return MachineId(str(uuid.uuid4()), created=False, persisted=False)
    path = config_dir / MACHINE_ID_FILE
    existing = read_machine_id(path)
    if existing is not None:
        return MachineId(existing, created=False, persisted=True)
    fresh = str(uuid.uuid4())
    try:
        stored = _write_new(config_dir, path, fresh)
    except OSError:
        stored = None
    if stored is None:
        return MachineId(fresh, created=False, persisted=False)
    return MachineId(stored, created=stored == fresh, persisted=True)
