"""Encode every episode with V: RUN/latents/<episode file name> holds mu and logvar (float16)
per frame with the episode's actions, rewards and dones (format: worldmodels.data.latents)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from worldmodels.atomic import writable_dir
from worldmodels.data.latents import Latents, write_latents
from worldmodels.data.rollouts import iter_episodes
from worldmodels.errors import UserError
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths
from worldmodels.train.vae import episode_files, load_vae

BATCH = 256


def encode(run: Path, data: Path, progress: bool = True,
           files: list[Path] | None = None) -> list[Path]:
    """Encode the episodes in `data` (or just `files`) with the run's V; returns the latents
    files written."""
    paths = RunPaths(Path(run))
    model, _ = load_vae(paths.root)
    files = episode_files(Path(data)) if files is None else files
    writable_dir(paths.latents, "--run")
    written = []
    bar = progress_bar(iter_episodes(files), total=len(files), desc="encode", unit="episode",
                       disable=not progress)
    with torch.no_grad():
        for path, episode in bar:
            mus, logvars = [], []
            for start in range(0, len(episode), BATCH):
                mu, logvar = model.encode(torch.from_numpy(episode.obs[start:start + BATCH]))
                mus.append(mu)
                logvars.append(logvar)
            out = paths.latents / path.name
            write_latents(out, Latents(
                mu=torch.cat(mus).numpy().astype(np.float16),
                logvar=torch.cat(logvars).numpy().astype(np.float16),
                action=episode.action, reward=episode.reward, done=episode.done,
            ))
            written.append(out)
    if not written:
        raise UserError(f"{data}: none of the {len(files)} episode files could be read")
    return written


def default_data(run: Path) -> Path:
    """The data V was trained on (recorded in its checkpoint), else ./rollouts."""
    _, payload = load_vae(run)
    return Path(payload.get("data") or "rollouts")


def cli_encode(args: argparse.Namespace) -> int:
    data = args.data if args.data is not None else default_data(args.run)
    written = encode(args.run, data)
    print(f"encode: {len(written)} episodes from {data} -> {RunPaths(args.run).latents}")
    return 0
