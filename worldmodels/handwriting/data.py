"""Stroke-3 drawings: loaders, normalisation, and padded batches with masks.

A drawing is a float32 array (points, 3) of `(dx, dy, pen_lift)`: offsets from the previous
point, and pen_lift = 1 on the last point of each stroke (the pen leaves the paper after it).

Three sources:
- the flat `.npz` of the bundled Omniglot file (`{split}_strokes`, `{split}_offsets`; no pickle);
- sketch-rnn `.npz` files (object arrays `train`/`valid`/`test`, which need pickle: opt-in only);
- IAM-OnDB `lineStrokes` XML (one file per line of writing, absolute points; a directory
  is walked recursively), split into train/valid here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from worldmodels.errors import UserError
from worldmodels.npfiles import read_npz

DEFAULT_DATA = Path(__file__).parent / "data" / "omniglot_stroke3.npz"
FLAT_KEYS = ("train_strokes", "train_offsets", "valid_strokes", "valid_offsets")
START_TOKEN = (0.0, 0.0, 1.0)  # "the pen was just lifted": every drawing begins a new stroke


@dataclass
class Splits:
    train: list[np.ndarray]
    valid: list[np.ndarray]


# --------------------------------------------------------------------- loaders
def load_drawings(path: Path, allow_pickle: bool = False, valid_fraction: float = 0.05,
                  seed: int = 0) -> Splits:
    """Read train/valid drawings from an `.npz` file, an IAM `.xml` file, or a directory of them."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix.lower() == ".xml":
        drawings = load_iam(path)
        splits = split_valid(drawings, valid_fraction, seed, where=path)
    elif path.suffix.lower() == ".npz":
        splits = load_npz(path, allow_pickle)
    else:
        raise UserError(f"{path}: expected a .npz file, an IAM .xml file or a directory of them")
    if not splits.train:
        raise UserError(f"{path}: no training drawings")
    if not splits.valid:
        raise UserError(f"{path}: no validation drawings")
    return splits


def load_npz(path: Path, allow_pickle: bool = False) -> Splits:
    """The flat Omniglot layout (no pickle), or sketch-rnn object arrays (with allow_pickle)."""
    members = _member_names(path)
    if "train" in members:
        if not allow_pickle:
            raise UserError(f"{path}: sketch-rnn .npz holds object arrays that need pickle; "
                            "pass --allow-pickle only if you trust this file")
        return load_sketch_rnn(path)
    archive = read_npz(path, FLAT_KEYS)
    keys = set(archive)
    if {"train_strokes", "train_offsets"} <= keys:
        return Splits(*(_flat_split(archive, path, s) for s in ("train", "valid")))
    raise UserError(f"{path}: unknown .npz layout (keys {sorted(members)[:5]}); expected "
                    "train_strokes/train_offsets or sketch-rnn train/valid/test")


def _member_names(path: Path) -> list[str]:
    """The array names in an .npz, without reading (or unpickling) any array."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [name.removesuffix(".npy") for name in zf.namelist()]
    except (OSError, zipfile.BadZipFile):
        return []  # read_npz names the fault


def _flat_split(archive: dict[str, np.ndarray], path: Path, split: str) -> list[np.ndarray]:
    if f"{split}_strokes" not in archive:
        return []
    if f"{split}_offsets" not in archive:
        raise UserError(f"{path}: {split}_strokes without {split}_offsets")
    strokes, offsets = archive[f"{split}_strokes"], archive[f"{split}_offsets"]
    for key, array in ((f"{split}_strokes", strokes), (f"{split}_offsets", offsets)):
        if not np.issubdtype(array.dtype, np.number) or array.dtype.kind == "c":
            raise UserError(f"{path}: {key} holds {array.dtype} values, expected numbers")
    if strokes.ndim != 2 or strokes.shape[1] != 3:
        raise UserError(f"{path}: {split}_strokes has shape {strokes.shape}, expected (points, 3)")
    if (offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0
            or offsets[-1] != len(strokes) or np.any(np.diff(offsets) < 0)):
        raise UserError(f"{path}: {split}_offsets do not index {split}_strokes "
                        f"(need 0 .. {len(strokes)}, non-decreasing)")
    data = _checked(strokes.astype(np.float32), path, f"{split}_strokes")  # checked at once
    return [d for d in np.split(data, offsets[1:-1]) if len(d)]


def load_sketch_rnn(path: Path) -> Splits:
    """sketch-rnn `.npz`: object arrays of int16 (points, 3). Unpickles: trusted files only."""
    try:
        archive = np.load(path, allow_pickle=True, encoding="latin1")
        raw = {s: list(archive[s]) for s in ("train", "valid") if s in archive.files}
    except Exception as err:
        raise UserError(f"{path}: not a readable sketch-rnn .npz ({type(err).__name__})") from None
    return Splits(*(
        [_checked(np.asarray(d, dtype=np.float32), path, f"{s}[{i}]")
         for i, d in enumerate(raw.get(s, []))]
        for s in ("train", "valid")
    ))


def load_iam(path: Path) -> list[np.ndarray]:
    """IAM-OnDB lineStrokes: each XML file is one drawing; absolute points become offsets."""
    files = sorted(Path(path).rglob("*.xml")) if Path(path).is_dir() else [Path(path)]
    if not files:
        raise UserError(f"{path}: no .xml files found")
    return [d for d in (_read_iam_file(f) for f in files) if len(d)]


def _read_iam_file(path: Path) -> np.ndarray:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise UserError(f"{path}: not readable XML ({err})") from None
    strokes = [s for s in root.iter("Stroke")]
    if root.find(".//StrokeSet") is None and root.tag != "StrokeSet":
        raise UserError(f"{path}: no <StrokeSet> (not an IAM-OnDB lineStrokes file)")
    points, pens = [], []
    for stroke in strokes:
        xy = []
        for point in stroke.iter("Point"):
            try:
                xy.append((float(point.attrib["x"]), float(point.attrib["y"])))
            except (KeyError, ValueError):
                raise UserError(f"{path}: a <Point> lacks numeric x= and y=") from None
        if xy:
            points.extend(xy)
            pens.extend([0.0] * (len(xy) - 1) + [1.0])
    if not points:
        return np.zeros((0, 3), np.float32)
    absolute = np.asarray(points, dtype=np.float64)
    offsets = np.diff(absolute, axis=0, prepend=absolute[:1])  # first point: (0, 0)
    # A nan or 1e300 coordinate would train to a nan loss: refused as the .npz loader does.
    with np.errstate(over="ignore"):  # an overflow to inf is what _checked reports
        drawing = np.column_stack([offsets, pens]).astype(np.float32)
    return _checked(drawing, path, "lineStrokes")


def _checked(drawing: np.ndarray, path: Path, where: str) -> np.ndarray:
    if drawing.ndim != 2 or drawing.shape[1] != 3:
        raise UserError(f"{path}: drawing {where} has shape {drawing.shape}, expected (points, 3)")
    if not np.isfinite(drawing).all():
        raise UserError(f"{path}: drawing {where} has non-finite values")
    if not np.isin(drawing[:, 2], (0.0, 1.0)).all():
        raise UserError(f"{path}: drawing {where} has a pen_lift column other than 0/1")
    return drawing


def split_valid(drawings: list[np.ndarray], fraction: float, seed: int,
                where: Path | str = "data") -> Splits:
    """Hold out a seeded random `fraction` (at least one drawing) for validation."""
    if len(drawings) < 2:
        raise UserError(f"{where}: need at least 2 drawings (train + valid), found {len(drawings)}")
    order = np.random.default_rng(seed).permutation(len(drawings))
    n_valid = min(len(drawings) - 1, max(1, round(fraction * len(drawings))))
    return Splits(train=[drawings[i] for i in order[n_valid:]],
                  valid=[drawings[i] for i in order[:n_valid]])


# --------------------------------------------------------------------- normalisation
def offset_scale(drawings: list[np.ndarray]) -> tuple[float, float]:
    """Per-axis std of (dx, dy) over all points: dividing by it gives unit std."""
    points = np.concatenate([d[:, :2] for d in drawings]).astype(np.float64)
    std = points.std(axis=0)
    return tuple(float(s) if s > 0 else 1.0 for s in std)  # type: ignore[return-value]


def normalise(drawing: np.ndarray, scale: tuple[float, float], clip: float) -> np.ndarray:
    """Unit-std offsets, outliers clipped to +-clip (in std units)."""
    out = drawing.astype(np.float32, copy=True)
    out[:, :2] = np.clip(out[:, :2] / np.asarray(scale, np.float32), -clip, clip)
    return out


def denormalise(drawing: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    out = drawing.astype(np.float32, copy=True)
    out[:, :2] *= np.asarray(scale, np.float32)
    return out


# --------------------------------------------------------------------- batches
@dataclass
class Batch:
    """inputs[t] = the point before targets[t] (the start token at t=0); mask marks real points."""

    inputs: Tensor   # (B, T, 3)
    targets: Tensor  # (B, T, 3)
    mask: Tensor     # (B, T) float, 1 on real points

    @property
    def points(self) -> int:
        return int(self.mask.sum().item())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


def pad_batch(drawings: list[np.ndarray]) -> Batch:
    """Pad to the longest drawing; every point of every drawing is a target."""
    longest = max(len(d) for d in drawings)
    targets = np.zeros((len(drawings), longest, 3), np.float32)
    mask = np.zeros((len(drawings), longest), np.float32)
    for i, d in enumerate(drawings):
        targets[i, :len(d)] = d
        mask[i, :len(d)] = 1.0
    inputs = np.empty_like(targets)
    inputs[:, 0] = START_TOKEN
    inputs[:, 1:] = targets[:, :-1]
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask))


def iter_batches(drawings: list[np.ndarray], batch_size: int,
                 rng: np.random.Generator | None = None) -> Iterator[Batch]:
    """Batches of similar length (less padding). With `rng`: shuffled; without: in order."""
    order = np.arange(len(drawings)) if rng is None else rng.permutation(len(drawings))
    # Sort by length inside windows of 50 batches, then shuffle the batches themselves.
    window = batch_size * 50
    chunks = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: len(drawings[i]))
        chunks += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for chunk in chunks:
        yield pad_batch([drawings[i] for i in chunk])


def batch_count(n_drawings: int, batch_size: int) -> int:
    window = batch_size * 50
    full, rest = divmod(n_drawings, window)
    return full * 50 + -(-rest // batch_size)
