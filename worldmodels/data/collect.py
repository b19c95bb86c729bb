"""Collect episodes of a game (CarRacing by default) in-process or on Ray workers, one atomic
`.npz` per episode.

Episode i of a collection uses seed `seed + i` for the track and for the policy, and is
stored as `episode_<seed>.npz`. A rerun into the same directory fills in the missing seeds
only; files already there are never rewritten. Ray workers return each episode already
compressed, so compression runs in parallel and the driver (which may be on another machine
than the workers) only writes files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodels.atomic import writable_dir, write_bytes
from worldmodels.config import CollectConfig, check_fields
from worldmodels.data.policies import check_policy, make_policy
from worldmodels.data.rollouts import (
    Episode,
    encode_episode,
    episode_path,
    validate_dir,
    write_episode,
)
from worldmodels.env.carracing import CARRACING
from worldmodels.env.game import Game
from worldmodels.env.games import get_game
from worldmodels.errors import UserError
from worldmodels.progress import progress_bar
from worldmodels.ray_session import ActorPool, ensure_ray, warn_if_address_ignored


def run_episode(env, policy_name: str, seed: int, game: Game = CARRACING) -> Episode:
    """Play `env` (the game's make_env() env) with the seeded policy until it ends; `obs[t]`
    is the frame the action `action[t]` was chosen on.

    `done` marks a terminal step only (CarRacing: the car left the playfield or finished the
    lap; Take Cover: death): an episode cut off by the time limit has none, since nothing in
    the frames announces a time limit, and M's done head, trained on it, would end dreams at
    random."""
    policy = make_policy(policy_name, seed, game)
    obs, _ = env.reset(seed=seed)
    frames, actions, rewards = [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = policy(obs)
        frames.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
    dones = np.zeros(len(actions), bool)
    dones[-1] = terminated
    return Episode(
        obs=np.stack(frames), action=np.stack(actions).astype(np.float32),
        reward=np.asarray(rewards, np.float32), done=dones, seed=seed, policy=policy_name,
    )


class EpisodeWorker:
    """Holds one env for its lifetime; returns each episode as compressed npz bytes."""

    def __init__(self, max_steps: int, policy: str, env: str = CARRACING.name):
        self.game = get_game(env)
        self.env = self.game.make_env(max_steps=max_steps)
        self.policy = policy

    def run(self, seed: int) -> tuple[int, bytes, int]:
        episode = run_episode(self.env, self.policy, seed, self.game)
        return seed, encode_episode(episode), len(episode)


def prepare_out_dir(out: Path) -> None:
    """Create `out` if needed, check it is a writable directory, drop the temp files of
    killed runs (never those of another collect still writing here)."""
    writable_dir(out, "--out")


def collect(
    out: Path, config: CollectConfig, address: str | None = None, progress: bool = True,
    env: str = CARRACING.name,
) -> list[Path]:
    """Collect the episodes of `config` in game `env` into `out`; returns the paths of all
    its seeds."""
    out = Path(out)
    game = get_game(env)
    game.require()
    try:
        check_policy(config.policy, game)
    except ValueError as err:
        raise UserError(str(err)) from None
    check_fields(config, "config.json or a flag", "collect")
    prepare_out_dir(out)
    warn_if_address_ignored(address, config.workers)
    seeds = [config.seed + i for i in range(config.episodes)]
    paths = [episode_path(out, seed) for seed in seeds]
    missing = [seed for seed in seeds if not episode_path(out, seed).exists()]
    if not missing:
        return paths
    if config.workers > 0:
        ensure_ray(address, config.workers)  # before the bar: a bad address is one clean line
    bar = progress_bar(total=len(missing), unit="ep", desc=f"collect ({game.title})",
                       disable=not progress)
    try:
        if config.workers == 0:
            _collect_serial(out, config, missing, bar, game)
        else:
            _collect_ray(out, config, missing, bar, game)
    finally:
        bar.close()
    return paths


def _update_bar(bar: tqdm, frames: int, start: float) -> None:
    bar.update(1)
    bar.set_postfix(frames_per_s=f"{frames / max(time.perf_counter() - start, 1e-9):.0f}")


def _collect_serial(out: Path, config: CollectConfig, seeds: list[int], bar: tqdm,
                    game: Game) -> None:
    env = game.make_env(max_steps=config.max_steps)
    start, frames = time.perf_counter(), 0
    try:
        for seed in seeds:
            episode = run_episode(env, config.policy, seed, game)
            write_episode(episode_path(out, seed), episode)
            frames += len(episode)
            _update_bar(bar, frames, start)
    finally:
        env.close()


def _collect_ray(out: Path, config: CollectConfig, seeds: list[int], bar: tqdm,
                 game: Game) -> None:
    pool = ActorPool(EpisodeWorker, (config.max_steps, config.policy, game.name),
                     min(config.workers, len(seeds)))
    start, frames = time.perf_counter(), 0
    try:
        for _, (seed, data, steps) in pool.run("run", [(seed,) for seed in seeds]):
            write_bytes(episode_path(out, seed), data)
            frames += steps
            _update_bar(bar, frames, start)
    finally:
        pool.close()


def collect_config(args: argparse.Namespace) -> CollectConfig:
    """The flags as a config; --max-steps and --policy default to the game's own."""
    game = get_game(args.env)
    return CollectConfig(
        episodes=args.episodes, max_steps=args.max_steps or game.max_steps,
        policy=args.policy or game.policies[0], seed=args.seed, workers=args.workers,
    )


def cli_collect(args: argparse.Namespace) -> int:
    paths = collect(args.out, collect_config(args), address=args.address, env=args.env)
    print(f"{len(paths)} episodes in {args.out}")
    return 0


def cli_validate(args: argparse.Namespace) -> int:
    good, problems = validate_dir(args.data)
    for problem in problems:
        print(problem)
    print(f"{args.data}: {len(good)} good, {len(problems)} bad episode files")
    return 1 if problems else 0
