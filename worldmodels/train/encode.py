"""Encode every episode with V: RUN/latents/<episode file name> holds mu and logvar (float16)
per frame with the episode's actions, rewards and dones (format: worldmodels.data.latents).
RUN/dream_starts.npz gets the first frames' (mu, logvar) of up to 1,000 of them, so the
stages that dream read one small file, not a thousand."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from worldmodels.agent import MAX_STARTS, save_starts, stack_starts
from worldmodels.atomic import writable_dir
from worldmodels.data.latents import Latents, write_latents
from worldmodels.data.rollouts import iter_episodes
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths
from worldmodels.train.vae import episode_files, load_vae

BATCH = 256


def encode(run: Path, data: Path, progress: bool = True, device: str = "cpu",
           files: list[Path] | None = None) -> list[Path]:
    """Encode the episodes in `data` with the run's V; returns the latents files written.
    With `files`, only those (iterate's new episodes): the dream starts are kept as they are."""
    paths = RunPaths(Path(run))
    model, _ = load_vae(paths.root)
    model.to(device)
    partial = files is not None
    files = files if partial else episode_files(Path(data))
    writable_dir(paths.latents, "--run")
    written, starts = [], []
    bar = progress_bar(iter_episodes(files), total=len(files), desc="encode", unit="episode",
                       disable=not progress)
    with torch.no_grad():
        for path, episode in bar:
            mus, logvars = [], []
            for start in range(0, len(episode), BATCH):
                frames = torch.from_numpy(episode.obs[start:start + BATCH]).to(device)
                mu, logvar = model.encode(frames)
                mus.append(mu.cpu())
                logvars.append(logvar.cpu())
            out = paths.latents / path.name
            latents = Latents(
                mu=torch.cat(mus).numpy().astype(np.float16),
                logvar=torch.cat(logvars).numpy().astype(np.float16),
                action=episode.action, reward=episode.reward, done=episode.done,
            )
            write_latents(out, latents)
            written.append(out)
            if len(starts) < MAX_STARTS:
                starts.append(latents)
    if not written:
        raise UserError(f"{data}: none of the {len(files)} episode files could be read")
    if not partial:
        save_starts(paths.dream_starts, stack_starts(starts))
    return written


def default_data(run: Path) -> Path:
    """The data V was trained on (recorded in its checkpoint), else ./rollouts."""
    _, payload = load_vae(run)
    return Path(payload.get("data") or "rollouts")


def cli_encode(args: argparse.Namespace) -> int:
    data = args.data if args.data is not None else default_data(args.run)
    written = encode(args.run, data, device=str(resolve_device(args.device)))
    print(f"encode: {len(written)} episodes from {data} -> {RunPaths(args.run).latents}")
    return 0
