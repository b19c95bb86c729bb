"""Reading `.npz` and `.npy` files without pickle, one way for every reader.

Any fault of the file (missing, not a numpy file at all, a damaged zip or deflate stream, a
garbled array header) becomes one line naming the file, raised as the caller's error type,
so each reader can skip or refuse it. Arrays are read eagerly: a damaged member then fails
here, not later in a training loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from worldmodels.errors import UserError

NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one ends at once)
NPY_MAGIC = b"\x93NUMPY"


def _magic(path: Path, size: int, error: type[UserError]) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(size)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None


def _fault(path: Path, err: Exception, error: type[UserError]) -> UserError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return error(f"{path}: corrupt or truncated ({type(err).__name__}"
                 f"{': ' + detail[:120] if detail else ''})")


def read_npz(path: Path, keys: Iterable[str] | None = None,
             error: type[UserError] = UserError) -> dict[str, np.ndarray]:
    """The arrays of `path` (only `keys` when given, those present), read without pickle."""
    path = Path(path)
    if _magic(path, 4, error) not in NPZ_MAGIC:
        raise error(f"{path}: not a valid .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            wanted = archive.files if keys is None else [k for k in keys if k in archive.files]
            return {key: archive[key] for key in wanted}
    except Exception as err:  # zlib.error, tokenize.TokenError, BadZipFile, ValueError, ...
        raise _fault(path, err, error) from None


def read_npy(path: Path, error: type[UserError] = UserError) -> np.ndarray:
    """The array in `path`, read without pickle."""
    path = Path(path)
    if _magic(path, len(NPY_MAGIC), error) != NPY_MAGIC:
        raise error(f"{path}: not a valid .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # a garbled header, a truncated body, an object array
        raise _fault(path, err, error) from None
