"""Scalars to TensorBoard (namespaced `stage/name`) with a CSV copy per stage."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from worldmodels import atomic
from worldmodels.atomic import writable_dir


class RunLogger:
    def __init__(self, log_dir: Path, stage: str, keep_through: int | None = None):
        """`keep_through`: the step of the checkpoint a stage (re)starts from. Rows logged
        after it belong to work that was lost (a kill between a row and its checkpoint)
        and is about to be redone, so they are dropped: a resumed run has no duplicates."""
        self.stage = stage
        log_dir = writable_dir(Path(log_dir), "--run")
        self.csv_path = log_dir / f"{stage}.csv"
        if keep_through is not None:
            _drop_rows_after(self.csv_path, keep_through)
        self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard" / stage))

    def log(self, step: int, **scalars: float) -> None:
        """One row: step plus scalars. A resumed stage appends; a row with new columns
        rewrites the CSV once with the union of the columns, so every row stays aligned."""
        for name, value in scalars.items():
            self.writer.add_scalar(f"{self.stage}/{name}", float(value), step)
        self.writer.flush()
        row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        header = _csv_header(self.csv_path)
        if header is not None and not set(row) <= set(header):
            _rewrite_with_columns(self.csv_path, header + [k for k in row if k not in header])
            header = _csv_header(self.csv_path)
        with self.csv_path.open("a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header or list(row))
            if header is None:
                out.writeheader()
            out.writerow(row)

    def close(self) -> None:
        self.writer.close()


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows as floats; a column a row lacks is NaN."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) if v else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)]


def _drop_rows_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if float(row["step"]) <= step]
    if len(kept) < len(rows):
        with atomic.replacing(path) as tmp, tmp.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=columns)
            out.writeheader()
            out.writerows(kept)


def _csv_header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with path.open(newline="") as f:
        return next(csv.reader(f), None)


def _rewrite_with_columns(path: Path, columns: list[str]) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with atomic.replacing(path) as tmp, tmp.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=columns)
        out.writeheader()
        out.writerows(rows)
