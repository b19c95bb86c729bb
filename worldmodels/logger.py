"""Scalars to TensorBoard (namespaced `stage/name`) with a CSV copy per stage."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    def __init__(self, log_dir: Path, stage: str):
        self.stage = stage
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = log_dir / f"{stage}.csv"
        self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard" / stage))

    def log(self, step: int, **scalars: float) -> None:
        """One row: step plus scalars. A resumed stage appends; a new column starts a new header."""
        for name, value in scalars.items():
            self.writer.add_scalar(f"{self.stage}/{name}", float(value), step)
        self.writer.flush()
        row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(row))
            if new:
                out.writeheader()
            out.writerow(row)

    def close(self) -> None:
        self.writer.close()


def read_csv(path: Path) -> list[dict[str, float]]:
    with Path(path).open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
