"""Videos: a dream decoded through V and driven by C, and real frames beside V's
reconstructions. imageio v3 writes .mp4 (with imageio-ffmpeg) or .gif by the file's suffix."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from worldmodels import atomic
from worldmodels.agent import WorldModel, decode_frames
from worldmodels.data.frames import upscale
from worldmodels.device import resolve_device
from worldmodels.env.dream import BatchedDream
from worldmodels.errors import UserError, require_finite
from worldmodels.evolve.cmaes import evolved_config
from worldmodels.run import RunPaths

SCALE = 4  # 64x64 frames are tiny on a screen
SUFFIXES = (".mp4", ".gif")


def side_by_side(real: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Two (64, 64, 3) uint8 frames -> one (64, 130, 3) with a 2-pixel white gap."""
    gap = np.full((real.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([real, gap, recon], axis=1)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 50,
                scale: int = SCALE) -> Path:
    """Write uint8 (H, W, 3) frames as .mp4 or .gif (written to a temp name, then renamed)."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: video must end in {' or '.join(SUFFIXES)}")
    if not frames:
        raise UserError(f"{path}: no frames to write")
    atomic.writable_dir(path.parent, "--out")
    # Even sizes: H.264 in yuv420p needs them.
    stack = upscale(np.stack(frames), scale)
    stack = stack[:, : stack.shape[1] // 2 * 2, : stack.shape[2] // 2 * 2]
    with atomic.replacing(path) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, stack, extension=".gif", duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, stack, extension=".mp4", fps=fps, codec="libx264",
                        macro_block_size=1)
    return path


def dream_frames(run: Path, steps: int = 300, seed: int = 0, tau: float | None = None,
                 params: np.ndarray | None = None, device: str = "cpu") -> list[np.ndarray]:
    """A dream from the run's M, driven by its C (controller.npy), decoded through V."""
    paths = RunPaths(Path(run))
    rules = evolved_config(paths)  # the dream C evolved in
    tau = rules.tau if tau is None else tau
    require_finite("--tau", tau, above=0)
    world = WorldModel.from_run(paths.root)
    params = world.load_controller(paths) if params is None else params
    dream = BatchedDream(world.mdnrnn(device), world.starts(), tau, steps, device,
                         world.game.actions, rules.done, world.done_pos_weight)
    controllers = world.controllers(params, dream.device)
    with torch.inference_mode():
        dream.reset([seed])
        zs = [dream.z.clone()]
        for _ in range(steps):
            _, done = dream.drive(controllers)
            zs.append(dream.z.clone())
            if done[0]:
                break
        return list(decode_frames(world.vae(device), torch.cat(zs)))


def cli_dream_video(args: argparse.Namespace) -> int:
    frames = dream_frames(args.run, args.steps, args.seed, args.tau,
                          device=str(resolve_device(args.device)))
    fps = args.fps or WorldModel.from_run(args.run, with_vae=False).game.fps
    write_video(args.out, frames, fps=fps, scale=args.scale)
    print(f"dream-video: {len(frames)} frames -> {args.out}")
    return 0
