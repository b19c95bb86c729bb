"""Checkpoints: a tensors-only `.pt` (loaded with weights_only=True) beside a JSON config.

`save` writes both atomically; `load_model` rebuilds the module from the JSON and refuses
a state whose tensor sizes differ from what the config implies, naming both sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from worldmodels import atomic
from worldmodels.config import from_dict, load_json, save_json, warn_ignored_on_resume
from worldmodels.errors import UserError

M = TypeVar("M", bound=nn.Module)
C = TypeVar("C")


def save(path: Path, model: nn.Module, config: Any, extra: dict[str, Any] | None = None) -> None:
    """Write `path` (.pt: {"model": state_dict, **extra}) and `path` with .json (the config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), **(extra or {})}
    with atomic.replacing(path) as tmp:
        torch.save(payload, tmp)
    save_json(asdict(config), path.with_suffix(".json"))


def load_payload(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None


def load_model(path: Path, model_cls: type[M], config_cls: type) -> tuple[M, dict[str, Any]]:
    """Rebuild `model_cls(config)` from `path`'s JSON and load its weights.

    Returns (model in eval mode, the rest of the payload, e.g. optimizer state)."""
    path = Path(path)
    config_path = path.with_suffix(".json")
    config = from_dict(config_cls, load_json(config_path), str(config_path))
    model = model_cls(config)
    payload = load_payload(path)
    state = payload.pop("model", None)
    if not isinstance(state, dict):
        raise UserError(f"{path}: no model weights in checkpoint")
    expected = model.state_dict()
    if set(state) != set(expected):
        raise UserError(
            f"{path}: checkpoint is not a {model_cls.__name__} (tensor names differ: "
            f"{sorted(set(state) ^ set(expected))[:3]} ...)"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"{path}: {name} has size {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[name].shape)} from its config {path.with_suffix('.json').name}"
            )
    model.load_state_dict(state)
    return model.eval(), payload


def resume_or_start(path: Path, resume: bool,
                    load: Callable[[Path], tuple[M, dict[str, Any]]]) -> tuple[M | None, dict]:
    """Every trainer's rule: an existing checkpoint is continued with `resume` and never
    overwritten without it. Returns (model, payload) to continue, or (None, {}) to start."""
    path = Path(path)
    if path.exists() and not resume:
        raise UserError(f"{path} exists; pass --resume to continue it or choose another --run")
    if resume and path.exists():
        return load(path)
    return None, {}


def resumed_config(path: Path, saved: C, asked: C, fixed: tuple[str, ...] = (),
                   stage: str = "", keep: tuple[str, ...] = ("epochs",)) -> C:
    """On resume the run's own config wins; only the epoch count follows `asked`. Settings
    in `fixed` must match, or the resumed run would silently train another model; other
    differences (outside `keep`) are ignored, and a warning says which."""
    for name in fixed:
        trained, wanted = getattr(saved, name), getattr(asked, name)
        if trained != wanted:
            raise UserError(f"{path} was trained with {name} {trained}, not {wanted}; "
                            "resume with the same setting or choose another --run")
    warn_ignored_on_resume(stage, asked, saved, keep)
    saved.epochs = asked.epochs
    return saved
