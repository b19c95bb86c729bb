"""Train V (the ConvVAE) on frames streamed from episode files; resumable per epoch.

Writes RUN/vae.pt + vae.json (weights, optimizer state, epoch), RUN/logs/vae.csv (one row
per epoch: train and held-out losses), RUN/logs/vae_steps.csv, TensorBoard scalars and
RUN/images/vae_epoch_NNN.png (held-out originals above their reconstructions).

Each epoch seeds its own episode order, shuffle buffer and reparameterisation noise from
(config.seed, epoch), so a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from worldmodels import atomic, checkpoint
from worldmodels.config import VAEConfig, check_fields, preset, preset_for
from worldmodels.data.frames import iter_frames_in_order, stream_frames, upscale
from worldmodels.data.rollouts import iter_episodes, list_episodes, split_holdout
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.logger import RunLogger
from worldmodels.models.vae import ConvVAE
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config

PNG_FRAMES = 8
EVAL_BATCH = 256


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def episode_files(data: Path) -> list[Path]:
    paths = list_episodes(data)
    if not paths:
        raise UserError(f"{data}: no episode files (episode_*.npz); run `worldmodels collect`")
    return paths


def load_vae(run: Path) -> tuple[ConvVAE, dict]:
    """V of a run (eval mode) and the rest of its checkpoint; one line if it is missing."""
    paths = RunPaths(Path(run))
    paths.require(paths.vae, "train-vae")
    return checkpoint.load_model(paths.vae, ConvVAE, VAEConfig)


@torch.no_grad()
def evaluate(model: ConvVAE, paths: list[Path]) -> dict[str, float]:
    """Held-out reconstruction (summed squared error per image, decoded from mu) and KL."""
    model.eval()
    rec = kl = 0.0
    n = 0
    device = next(model.parameters()).device
    for frames in iter_frames_in_order(paths, EVAL_BATCH):
        x = model.to_input(torch.from_numpy(frames).to(device))
        mu, logvar = model.encode(x)
        rec += (model.decode(mu) - x).square().flatten(1).sum(-1).sum().item()
        kl += (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)).sum().item()
        n += len(frames)
    if n == 0:
        return {"valid_rec": float("nan"), "valid_kl": float("nan")}
    return {"valid_rec": rec / n, "valid_kl": kl / n}


@torch.no_grad()
def reconstruct(model: ConvVAE, frames: np.ndarray) -> np.ndarray:
    """uint8 frames (B, 64, 64, 3) -> V's reconstructions from mu, the same shape and type."""
    model.eval()
    mu, _ = model.encode(torch.from_numpy(frames).to(next(model.parameters()).device))
    return (model.decode(mu).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 1) -> None:
    """One PNG: each row's frames side by side, the rows stacked, pixels repeated `scale` times."""
    grid = upscale(np.concatenate([np.concatenate(list(row), 1) for row in rows], 0), scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def save_reconstructions(model: ConvVAE, frames: np.ndarray, path: Path) -> None:
    """One PNG: the frames in the top row, their reconstructions (from mu) below."""
    save_grid([frames, reconstruct(model, frames)], path)


def _preview_frames(paths: list[Path]) -> np.ndarray:
    """PNG_FRAMES frames spread over the first readable episode."""
    for frames in iter_frames_in_order(paths[:3], 10_000):
        pick = np.linspace(0, len(frames) - 1, min(PNG_FRAMES, len(frames))).round()
        return frames[pick.astype(int)]
    return np.empty((0, 64, 64, 3), np.uint8)


def train_vae(data: Path, run: Path, config: VAEConfig, resume: bool = False,
              progress: bool = True, device: str = "cpu") -> None:
    """Train (or with `resume`, continue) V of `run` on the episodes in `data`."""
    check_fields(config, "config.json or a flag", "vae")
    data, paths = Path(data), RunPaths(Path(run))
    paths.writable()
    ckpt = paths.vae
    model, payload = checkpoint.resume_or_start(
        ckpt, resume, lambda p: checkpoint.load_model(p, ConvVAE, VAEConfig))
    if model is not None:
        config = checkpoint.resumed_config(ckpt, model.config, config, stage="train-vae")
    else:
        torch.manual_seed(config.seed)
        model = ConvVAE(config)
    model.to(device)  # before the optimizer: its state lives where the weights do

    train_paths, valid_paths = split_holdout(episode_files(data), config.holdout_episodes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    if payload:
        optimizer.load_state_dict(payload["optimizer"])
    start_epoch, step = int(payload.get("epoch", 0)), int(payload.get("step", 0))
    if start_epoch >= config.epochs and progress:
        tqdm.write(f"train-vae: {ckpt} already has {start_epoch} epochs; nothing to do")
    preview = _preview_frames(valid_paths or train_paths)

    logger = RunLogger(paths.logs, "vae", keep_through=step)
    step_logger = RunLogger(paths.logs, "vae_steps", keep_through=step)
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            seed = epoch_seed(config.seed, epoch)
            torch.manual_seed(seed)  # the reparameterisation noise of this epoch
            batches = stream_frames(train_paths, config.batch_size, config.shuffle_buffer,
                                    seed, config.max_frames_per_epoch)
            totals = np.zeros(3)
            frames_seen, t0 = 0, time.perf_counter()
            bar = progress_bar(batches, desc=f"train-vae epoch {epoch + 1}/{config.epochs}",
                               unit="batch", disable=not progress, leave=False)
            for frames in bar:
                loss, rec, kl = model.loss(torch.from_numpy(frames).to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                n = len(frames)
                totals += n * np.array([loss.item(), rec.item(), kl.item()])
                frames_seen += n
                bar.set_postfix(loss=f"{loss.item():.1f}", rec=f"{rec.item():.1f}")
                if step % 20 == 0:
                    step_logger.log(step, loss=loss.item(), rec=rec.item(), kl=kl.item())
            if frames_seen == 0:
                raise UserError(f"{data}: no readable frames in {len(train_paths)} episode files")
            seconds = time.perf_counter() - t0
            loss, rec, kl = totals / frames_seen
            result = evaluate(model, valid_paths)
            logger.log(step, epoch=epoch + 1, loss=loss, rec=rec, kl=kl, **result,
                       images_per_s=frames_seen / seconds, epoch_seconds=seconds)
            checkpoint.save(ckpt, model, config, {
                "kind": "vae", "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                "step": step, "data": str(data.resolve()),
            })
            if len(preview):
                save_reconstructions(model, preview,
                                     paths.root / "images" / f"vae_epoch_{epoch + 1:03d}.png")
            if progress:
                tqdm.write(f"train-vae epoch {epoch + 1}: loss {loss:.1f} (rec {rec:.1f}, "
                           f"kl {kl:.1f}); held-out rec {result['valid_rec']:.1f}; "
                           f"{frames_seen / seconds:.0f} images/s")
    finally:
        logger.close()
        step_logger.close()


def cli_train_vae(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    episode_files(args.data)  # bad data fails before load_run_config makes the run dir
    # A new run gets the default preset of its game; an existing one must be of that game.
    run_config = load_run_config(paths, default=preset(preset_for(None, args.env)))
    if args.env is not None and run_config.env != args.env:
        raise UserError(f"{paths.config}: this run learns --env {run_config.env}, not "
                        f"{args.env}; choose another --run")
    config = run_config.vae
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.batch_size is not None:
        config.batch_size = args.batch_size
    train_vae(args.data, args.run, config, resume=args.resume,
              device=str(resolve_device(args.device)))
    print(f"train-vae: V -> {paths.vae}")
    return 0


def late_frames(paths: list[Path], episodes: int, from_end: int) -> list[np.ndarray]:
    """The frame `from_end` steps before the end of each of the first `episodes` readable
    episodes long enough to have one (where Take Cover's fireball is close, or the car far
    along its track)."""
    frames = []
    for _, episode in iter_episodes(paths):
        if len(episode.obs) > from_end:
            frames.append(episode.obs[len(episode.obs) - 1 - from_end])
        if len(frames) == episodes:
            break
    return frames


def cli_compare_vae(args: argparse.Namespace) -> int:
    """Held-out frames of --data above each run's V reconstruction, and each V's held-out
    error: the same frames for every V, so Vs trained differently can be told apart."""
    if args.out.suffix.lower() != ".png":
        raise UserError(f"{args.out}: --out must be a .png")
    models = [load_vae(run)[0] for run in args.run]
    fractions = {model.config.holdout_episodes for model in models}
    if len(fractions) > 1:
        raise UserError(f"{', '.join(map(str, args.run))}: their Vs held out different "
                        f"fractions of episodes ({sorted(fractions)}); compare like with like")
    paths, fraction = episode_files(args.data), fractions.pop()
    _, valid = split_holdout(paths, fraction)
    if not valid:
        raise UserError(f"{args.data}: no held-out episodes among {len(paths)} (V holds out "
                        f"{fraction:g} of them, at least 1 of 2 or more)")
    picked = late_frames(valid, args.episodes, args.from_end)
    if not picked:
        raise UserError(f"{args.data}: no readable held-out episode longer than "
                        f"--from-end {args.from_end} steps")
    frames = np.stack(picked)
    rows = [frames]
    for run, model in zip(args.run, models, strict=True):
        rows.append(reconstruct(model, frames))
        result = evaluate(model, valid)
        print(f"{run}: held-out reconstruction error {result['valid_rec']:.2f} per frame "
              f"(summed squared error, {len(valid)} episodes); row {len(rows)}")
    save_grid(rows, args.out, args.scale)
    print(f"wrote {args.out}: row 1 the held-out frames, then each run's V")
    return 0
