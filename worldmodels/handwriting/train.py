"""Train the handwriting model: epochs over padded batches, a checkpoint per epoch, resumable.

A run directory holds `handwriting.pt` + `handwriting.json` (the model config, including the
offset scale) and logs (`logs/handwriting.csv` per epoch, `logs/handwriting_steps.csv`,
TensorBoard). `--resume` continues from the last finished epoch with the optimizer state and
the run's own config.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldmodels import checkpoint
from worldmodels.atomic import writable_dir
from worldmodels.device import resolve_device
from worldmodels.errors import UserError, warn
from worldmodels.handwriting.data import (
    DEFAULT_DATA,
    batch_count,
    iter_batches,
    load_drawings,
    normalise,
    offset_scale,
)
from worldmodels.handwriting.model import HandwritingConfig, HandwritingModel
from worldmodels.logger import RunLogger
from worldmodels.progress import progress_bar

KIND = "handwriting"
EXAMPLES = 64  # validation drawings kept in the checkpoint, in data units


def pack_drawings(drawings: list[np.ndarray]) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([len(d) for d in drawings], dtype=torch.int64)
    return {"example_points": torch.from_numpy(np.concatenate(drawings).astype(np.float32)),
            "example_lengths": lengths}


def unpack_drawings(payload: dict) -> list[np.ndarray]:
    points, lengths = payload.get("example_points"), payload.get("example_lengths")
    if points is None or lengths is None:
        return []
    return [p.numpy() for p in torch.split(points, lengths.tolist())]


def checkpoint_path(run: Path) -> Path:
    return Path(run) / "handwriting.pt"


def load_checkpoint(path: Path) -> tuple[HandwritingModel, dict]:
    """The model (eval mode) and the rest of the payload; refuses other models' checkpoints."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no handwriting checkpoint (train one with "
                        "`worldmodels handwriting train`)")
    try:
        model, payload = checkpoint.load_model(path, HandwritingModel, HandwritingConfig)
    except UserError as err:
        raise UserError(f"{path}: not a handwriting checkpoint ({err})") from None
    if payload.get("kind") != KIND:
        raise UserError(f"{path}: not a handwriting checkpoint (kind {payload.get('kind')!r})")
    return model, payload


def evaluate(model: HandwritingModel, drawings: list[np.ndarray], batch_size: int) -> float:
    """Mean NLL in nats per point over every point of `drawings`."""
    model.eval()
    device = next(model.parameters()).device
    total, points = 0.0, 0
    with torch.no_grad():
        for batch in iter_batches(drawings, max(batch_size, 256)):  # no grads: bigger batches
            total += model.point_nll(batch.to(device)).sum().item()
            points += batch.points
    return total / points


def train(config: HandwritingConfig, data: Path, run: Path, resume: bool = False,
          allow_pickle: bool = False, progress: bool = True,
          device: str = "cpu") -> dict[str, float]:
    """Train (or resume) the model in `run`; returns the final train and valid NLL."""
    run = writable_dir(Path(run), "--run")
    ckpt = checkpoint_path(run)
    model, payload = checkpoint.resume_or_start(ckpt, resume, load_checkpoint)
    if model is not None:
        saved_data = Path(model.config.data) if model.config.data else DEFAULT_DATA
        if Path(data).resolve() != saved_data.resolve():
            warn(f"handwriting train --resume keeps the checkpoint's data {saved_data} "
                 f"(not {data})")
        # scale, typical length and data are set by training from the data, not by the user.
        config = checkpoint.resumed_config(
            ckpt, model.config, config, stage="handwriting train",
            keep=("epochs", "scale_x", "scale_y", "typical_points", "data"))
        data = Path(config.data) if config.data else DEFAULT_DATA

    splits = load_drawings(data, allow_pickle, config.valid_fraction, config.seed)
    train_set = splits.train
    if config.max_train_drawings and config.max_train_drawings < len(train_set):
        keep = np.random.default_rng(config.seed).choice(
            len(train_set), config.max_train_drawings, replace=False)
        train_set = [train_set[i] for i in sorted(keep)]
    if not payload:
        config.scale_x, config.scale_y = offset_scale(train_set)
        config.typical_points = int(np.median([len(d) for d in train_set]))
        bundled = Path(data).resolve() == DEFAULT_DATA.resolve()
        config.data = "" if bundled else str(Path(data).resolve())
        torch.manual_seed(config.seed)
        model = HandwritingModel(config)
    train_set = [normalise(d, config.scale, config.clip) for d in train_set]
    valid_set = [normalise(d, config.scale, config.clip) for d in splits.valid]

    examples = pack_drawings(splits.valid[:EXAMPLES])  # real drawings for `sample` to show
    model.to(device)  # before the optimizer: its state lives where the weights do
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    if payload:
        optimizer.load_state_dict(payload["optimizer"])
    start_epoch, step = int(payload.get("epoch", 0)), int(payload.get("step", 0))
    # Two CSVs, because a CSV keeps one set of columns: per-epoch summaries and per-step loss.
    logger = RunLogger(run / "logs", KIND, keep_through=step)
    step_logger = RunLogger(run / "logs", f"{KIND}_steps", keep_through=step)
    result = {"train_nll": float(payload.get("train_nll", float("nan"))),
              "valid_nll": float(payload.get("valid_nll", float("nan")))}
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            rng = np.random.default_rng(config.seed * 1000 + epoch)  # resumable shuffling
            total, points, t0 = 0.0, 0, time.perf_counter()
            bar = progress_bar(iter_batches(train_set, config.batch_size, rng),
                               total=batch_count(len(train_set), config.batch_size),
                               desc=f"handwriting epoch {epoch + 1}/{config.epochs}",
                               disable=not progress, leave=False)
            for batch in bar:
                loss = model.loss(batch.to(device))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                total += loss.item() * batch.points
                points += batch.points
                bar.set_postfix(nll=f"{loss.item():.3f}")
                if step % 50 == 0:
                    step_logger.log(step, train_nll=loss.item())
            result = {"train_nll": total / points,
                      "valid_nll": evaluate(model, valid_set, config.batch_size)}
            logger.log(step, epoch=epoch + 1, epoch_seconds=time.perf_counter() - t0, **result)
            checkpoint.save(ckpt, model, config, {
                "kind": KIND, "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "step": step, **result, **examples,
            })
            if progress:
                tqdm.write(f"epoch {epoch + 1}: train {result['train_nll']:.4f} "
                           f"valid {result['valid_nll']:.4f} nats/point")
    finally:
        logger.close()
        step_logger.close()
    return result


def cli_train(args: argparse.Namespace) -> int:
    config = HandwritingConfig(
        hidden_size=args.hidden_size, layers=args.layers, components=args.components,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_train_drawings=args.train_drawings, seed=args.seed,
    )
    result = train(config, args.data or DEFAULT_DATA, args.run, resume=args.resume,
                   allow_pickle=args.allow_pickle, device=str(resolve_device(args.device)))
    print(f"handwriting: train NLL {result['train_nll']:.4f}, "
          f"valid NLL {result['valid_nll']:.4f} nats/point -> {checkpoint_path(args.run)}")
    return 0
