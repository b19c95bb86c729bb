"""Is the dream as dangerous as the game? The data policy, which played the run's first
episodes in the real game, plays M's dream at each temperature: a faithful dream lets it live
as long, and earn as much, as its real episodes did. A dream in which it lives far longer
teaches C a gentler game than the real one (C learns to exploit M); far shorter, and the
dream kills every controller alike, so evolution has nothing to rank.

It reads only the run's own data, never evaluation episodes. It is a diagnostic, not a way
to choose tau: on Take Cover, the tau at which the data policy lived as long as in the game
made a worse agent than the paper's 1.15 (README).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.agent import WorldModel
from worldmodels.data.policies import make_policy
from worldmodels.data.rollouts import BadEpisodeError, list_episodes
from worldmodels.device import resolve_device
from worldmodels.env.dream import BatchedDream
from worldmodels.errors import UserError
from worldmodels.evolve.cmaes import evolved_config
from worldmodels.npfiles import read_npz
from worldmodels.run import RunPaths, load_run_config

DREAM_SEED = 7_000_000  # dream i starts from seed DREAM_SEED + i (not an evaluation seed)


@dataclass
class Lifetimes:
    """How long a policy's episodes lasted (steps) and what they earned."""

    episodes: int
    mean_steps: float
    sem_steps: float  # standard error of the mean
    mean_return: float
    ended: float  # the fraction that ended by done (not by the step limit)

    @classmethod
    def of(cls, steps: np.ndarray, returns: np.ndarray, ended: np.ndarray) -> Lifetimes:
        n = len(steps)
        sem = float(np.std(steps, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        return cls(n, float(np.mean(steps)), sem, float(np.mean(returns)), float(np.mean(ended)))


def real_lifetimes(data: Path, policy: str) -> Lifetimes:
    """The data policy's real episodes in `data` (agent episodes that `iterate` added are left
    out: they are another policy)."""
    steps, returns, ended = [], [], []
    for path in list_episodes(data):
        arrays = read_npz(path, ("reward", "done", "policy"), BadEpisodeError)
        if str(arrays.get("policy")) != policy:
            continue
        steps.append(len(arrays["reward"]))
        returns.append(float(np.sum(arrays["reward"], dtype=np.float64)))
        ended.append(bool(np.any(arrays["done"])))
    if not steps:
        raise UserError(f"{data}: no episodes of the data policy {policy!r} to compare with")
    return Lifetimes.of(np.array(steps), np.array(returns), np.array(ended))


@torch.inference_mode()
def dream_episodes(world: WorldModel, policy: str, tau: float, done: str, dreams: int,
                   max_steps: int, device: str = "cpu",
                   seed: int = DREAM_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`dreams` dreams of M at temperature `tau`, dream i played by the data policy seeded
    `seed + i` (as a collected episode is) until M's done rule ends it or `max_steps`; returns
    each dream's steps, return, and whether done ended it."""
    game = world.game
    dream = BatchedDream(world.mdnrnn(device), world.starts(), tau, max_steps, device,
                         game.actions, done, world.done_pos_weight)  # it checks tau and done
    seeds = list(range(seed, seed + dreams))
    policies = [make_policy(policy, s, game) for s in seeds]
    dream.reset(seeds)
    steps, returns = np.zeros(dreams, np.int64), np.zeros(dreams)
    ended = np.zeros(dreams, bool)
    rows = np.arange(dreams)  # the dream each row of the batch is
    for _ in range(max_steps):
        actions = np.stack([policies[i](None) for i in rows])
        reward, done_now = dream.step(torch.from_numpy(actions).to(dream.device))
        steps[rows] += 1
        returns[rows] += reward.cpu().numpy()
        done_now = done_now.cpu().numpy()
        ended[rows[done_now]] = True
        if done_now.all():
            break
        if done_now.any():  # the dreams that ended leave the batch
            live = np.flatnonzero(~done_now)
            dream.keep_rows(torch.from_numpy(live).to(dream.device))
            rows = rows[live]
    return steps, returns, ended


def _line(name: str, life: Lifetimes) -> str:
    return (f"{name:<14} {life.mean_steps:8.1f} +- {life.sem_steps:5.1f} {life.mean_return:10.1f} "
            f"{100 * life.ended:7.0f}%")


def cli_dream_check(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    config = load_run_config(paths)
    rules = evolved_config(paths)  # the dream C evolved (or will evolve) in
    done = args.done or rules.done
    taus = args.tau or [rules.tau]
    data = args.data or paths.root / "data"
    policy = config.collect.policy
    real = real_lifetimes(data, policy)
    world = WorldModel.from_run(paths.root, with_vae=False)
    device = str(resolve_device(args.device))
    max_steps = args.max_steps or config.collect.max_steps
    print(f"dream-check: the data policy {policy!r} in the game ({data}) and in M's dream "
          f"({args.dreams} dreams of up to {max_steps} steps, done rule {done!r})")
    print(f"{'':<14} {'steps':>8} {'+- sem':>8} {'return':>10} {'ended':>8}")
    print(_line(f"real ({real.episodes})", real))
    for tau in taus:
        life = Lifetimes.of(*dream_episodes(world, policy, tau, done, args.dreams, max_steps,
                                            device))
        print(_line(f"dream tau {tau:g}", life), flush=True)
    return 0
