"""Every file the package writes goes through `replacing`: written under a temp name beside
its final one, synced, then renamed over it. A reader (or a rerun after a crash) sees the
old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp_"  # names of unfinished writes; a killed run may leave one behind


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; when the block ends, it replaces `path`. On an error (or
    Ctrl-C) the temp file is removed and `path` is left as it was. The temp name ends with
    `path`'s name, so libraries that pick a format by suffix pick the same one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=f"_{path.name}")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; our files are for everyone to read
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)
