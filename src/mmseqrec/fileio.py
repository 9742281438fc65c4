"""Atomic file writes and hashing. Nothing half-written is ever left behind.

Temporary siblings are named ``.NAME.<pid>-<random>.tmp``; a process killed mid-write leaves one behind, and the
next atomic write to the same ``NAME`` removes those whose process is gone (a directory swap interrupted between
its two renames is rolled back instead). Finished files and directories get the usual modes (``0666`` / ``0777``
minus the umask), not the private ``0600`` / ``0700`` of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "clean_orphans",
    "sha256_file",
    "temp_sibling",
]

_LEGACY_AGE_S = 3600.0  # tempfile-named leftovers (no pid in the name) older than this are orphans


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def clean_orphans(path: str | Path) -> list[Path]:
    """Remove temporary siblings of ``path`` left by killed writers; returns what was removed (or restored).

    ``.NAME.<pid>-*.tmp`` is removed when process ``pid`` no longer runs; a tempfile-style ``.NAME.*.tmp``
    without a pid when older than an hour. ``.NAME.old-<pid>`` (the previous version during a directory swap)
    is moved back to ``NAME`` when ``NAME`` is missing (the swap was cut between its renames), else removed.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    name = re.escape(path.name)
    tmp_re = re.compile(rf"^\.{name}\.(?:(\d+)-)?[A-Za-z0-9_]+\.tmp$")
    old_re = re.compile(rf"^\.{name}\.old-(\d+)$")
    done: list[Path] = []
    for p in parent.iterdir():
        if m := tmp_re.match(p.name):
            pid = m.group(1)
            if pid is not None:
                orphan = not _alive(int(pid))
            else:
                try:
                    orphan = time.time() - p.lstat().st_mtime > _LEGACY_AGE_S
                except OSError:
                    orphan = False
            if orphan:
                _remove(p)
                done.append(p)
        elif (m := old_re.match(p.name)) and not _alive(int(m.group(1))):
            if not path.exists():
                os.replace(p, path)
            else:
                _remove(p)
            done.append(p)
    return done


def temp_sibling(path: str | Path, *, directory: bool = False) -> Path:
    """Create an empty temporary file (or directory) next to ``path`` named ``.NAME.<pid>-<random>.tmp``,
    with the umask-based mode a plain ``open`` / ``mkdir`` would give. Orphans of killed runs are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path)
    mask = _umask()
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            if directory:
                tmp.mkdir()
                os.chmod(tmp, 0o777 & ~mask)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~mask))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``, on error removed."""
    tmp_path = temp_sibling(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it to ``path`` only when the block succeeds.

    With ``overwrite=True`` an existing ``path`` is replaced (after the new one is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path)  # may restore a directory whose swap was cut short
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    tmp = temp_sibling(path, directory=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
