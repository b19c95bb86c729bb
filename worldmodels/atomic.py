"""Every file the package writes goes through `replacing`: written under a temp name beside
its final one, synced, then renamed over it. A reader (or a rerun after a crash) sees the
old file or the new one, never half of one.

Temp names carry the writer's pid (`.tmp_<pid>_<random>_<name>`), so a process cleaning up
after a killed run removes only the temp files of processes that are gone, never those of
another writer still at work in the same directory.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from worldmodels.errors import UserError

TMP_PREFIX = ".tmp_"  # names of unfinished writes; a killed run may leave one behind
_TMP_PID = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)_")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; when the block ends, it replaces `path`. On an error (or
    Ctrl-C) the temp file is removed and `path` is left as it was. The temp name ends with
    `path`'s name, so libraries that pick a format by suffix pick the same one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{os.getpid()}_",
                                suffix=f"_{path.name}")
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def is_stale_temp(path: Path) -> bool:
    """A temp file whose writer is gone (or of the old pid-less format)."""
    match = _TMP_PID.match(path.name)
    if not path.name.startswith(TMP_PREFIX):
        return False
    return match is None or (int(match.group(1)) != os.getpid()
                             and not pid_alive(int(match.group(1))))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temp files in `directory` left by killed writers; returns them."""
    removed = []
    for tmp in Path(directory).glob(f"{TMP_PREFIX}*"):
        if is_stale_temp(tmp):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def writable_dir(path: Path, label: str) -> Path:
    """`path` as a directory this process can write into (made if missing), with the temp
    files of killed writers removed; else one line naming `label` (a flag, e.g. `--run`).

    Every stage calls it before its work, so a read-only run fails at once, not after an
    hour of training (or a whole evaluation) when the first file is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{label} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{label} {path}: cannot create directory "
                        f"({err.strerror or type(err).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{label} {path}: directory is not writable")
    remove_stale_temps(path)
    return path
