"""Where networks run: `--device auto|cpu|cuda[:N]`, one parser for every stage."""

from __future__ import annotations

import torch

from worldmodels.errors import UserError

DEVICE_HELP = "auto (a GPU when torch sees one), cpu, cuda or cuda:N"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` takes the first GPU torch sees, else the CPU; a named GPU must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: torch sees no GPU here; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    return device
