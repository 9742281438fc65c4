"""Atomic writes: umask-based modes (not tempfile's private 0600/0700) and clean-up of a killed writer's leftovers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mmseqrec.fileio import atomic_dir, atomic_write_json, atomic_write_text, clean_orphans

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_outputs_get_umask_modes(tmp_path: Path, umask_022) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o644
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    assert mode(tmp_path / "d") == 0o755
    os.umask(0o027)
    atomic_write_json(tmp_path / "b.json", {"k": 1})
    assert mode(tmp_path / "b.json") == 0o640


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphans_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    pid = dead_pid()
    orphan_dir = tmp_path / f".ds.{pid}-deadbeef.tmp"
    orphan_dir.mkdir()
    (orphan_dir / "half.parquet").write_bytes(b"half")
    orphan_file = tmp_path / f".x.json.{pid}-0123abcd.tmp"
    orphan_file.write_text("{")
    live = tmp_path / f".ds.{os.getpid()}-cafef00d.tmp"  # a writer still running: left alone
    live.mkdir()
    other = tmp_path / ".ds-other.1-aa.tmp"  # another name: left alone
    other.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("ok")
    assert not orphan_dir.exists() and live.exists() and other.exists()
    assert (target / "f").read_text() == "ok"
    atomic_write_text(tmp_path / "x.json", "{}")
    assert not orphan_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".ds-other.1-aa.tmp", live.name, "ds", "x.json"])


def test_directory_swap_cut_between_renames_is_rolled_back(tmp_path: Path) -> None:
    """A kill after ``path -> .path.old-PID`` and before ``tmp -> path`` leaves no ``path``: restore the old one."""
    pid = dead_pid()
    old = tmp_path / f".ds.old-{pid}"
    old.mkdir()
    (old / "enrich.parquet").write_text("precious")
    assert clean_orphans(tmp_path / "ds") == [old]
    assert (tmp_path / "ds" / "enrich.parquet").read_text() == "precious"


def test_killed_writer_leaves_nothing_after_the_next_run(tmp_path: Path) -> None:
    code = ("import sys, time\nfrom mmseqrec.fileio import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'half').write_text('x')\n"
            "    print('in', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "in"
    proc.kill()
    proc.wait()
    assert len(list(tmp_path.glob(".out.*.tmp"))) == 1
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "whole").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
