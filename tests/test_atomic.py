"""Atomic writes: the old file survives a failed write, and no temp file is left behind."""

from __future__ import annotations

import pytest

from worldmodels import atomic


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
