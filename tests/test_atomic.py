"""Atomic writes: the old file survives a failed write, and no temp file is left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worldmodels import atomic
from worldmodels.errors import UserError


def test_replacing_keeps_the_old_file_on_error_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text("half of the new")
        assert tmp.name.endswith("_state.json") and tmp.parent == path.parent
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped), so nothing runs under it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
    live = tmp_path / ".tmp_1_abc_episode_00000001.npz"  # pid 1 always runs
    dead = tmp_path / f".tmp_{_dead_pid()}_abc_episode_00000002.npz"
    legacy = tmp_path / ".tmp_stale.npz"  # the old, pid-less name: its writer is unknown
    for path in (live, dead, legacy):
        path.write_bytes(b"x")
    assert sorted(atomic.remove_stale_temps(tmp_path)) == sorted([dead, legacy])
    assert live.exists()


def test_a_second_writer_starting_up_keeps_the_first_writers_temp_file(tmp_path):
    # Two `collect` runs on one --out: the second's start-up cleanup ran while the first
    # was mid-write, deleted its temp file, and the first died on the rename.
    path = tmp_path / "episode_00000000.npz"
    with atomic.replacing(path) as tmp:
        tmp.write_bytes(b"episode")
        atomic.writable_dir(tmp_path, "--out")  # the other run starting up
        assert tmp.exists()
    assert path.read_bytes() == b"episode"


def test_writable_dir_names_a_file_in_the_way_and_an_unwritable_dir(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(UserError, match="--run .*exists and is not a directory"):
        atomic.writable_dir(a_file, "--run")
    with pytest.raises(UserError, match="--run .*cannot create directory"):
        atomic.writable_dir(a_file / "run", "--run")  # under a regular file: even root fails
    # Root writes through any mode bits, so os.access stands in for a read-only directory.
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match="--out .*is not writable"):
        atomic.writable_dir(tmp_path / "ro", "--out")
