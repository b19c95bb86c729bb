"""Collection frames/s against bare CarRacing-v3 steps/s, measured in the same run.

    python scripts/bench.py collect [--episodes-per-worker 3] [--max-steps 400]

Targets: a Ray worker collects at >= 0.9 of the bare env's speed (the wrapper, the
policy, compression and the transfer cost at most 10%), and 2 workers collect >= 1.7x
as fast as 1. Ray's own start-up (`ray.init`) is paid once, before any timing; starting
the actors is counted, as a real collection pays it too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from worldmodels.config import CollectConfig
from worldmodels.data.collect import collect
from worldmodels.ray_session import ensure_ray

PER_WORKER_TARGET = 0.9
TWO_WORKER_TARGET = 1.7


def bare_steps_per_s(episodes: int, max_steps: int) -> float:
    """The reference: plain CarRacing-v3, same episode length, random actions."""
    env = gym.make("CarRacing-v3", max_episode_steps=max_steps)
    env.action_space.seed(0)
    start, steps = time.perf_counter(), 0
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += 1
            done = terminated or truncated
    env.close()
    return steps / (time.perf_counter() - start)


def collect_frames_per_s(
    workers: int, episodes: int, max_steps: int, policy: str
) -> tuple[float, float]:
    """(end-to-end frames/s including actor start-up, steady-state frames/s).

    Steady state is read from the files' completion times: the frames of the episodes
    finished after the first `workers` files, over the time from that file to the last
    one, so each worker's start-up and first episode are left out."""
    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig(
            episodes=episodes, max_steps=max_steps, policy=policy, seed=0, workers=workers
        )
        start = time.perf_counter()
        paths = collect(Path(tmp), config, progress=False)
        elapsed = time.perf_counter() - start
        done = sorted((p.stat().st_mtime_ns, _frames(p)) for p in paths)
    total = sum(frames for _, frames in done)
    later = done[workers - 1:]
    span_s = (later[-1][0] - later[0][0]) / 1e9
    steady = sum(frames for _, frames in later[1:]) / span_s if span_s > 0 else float("nan")
    return total / elapsed, steady


def _frames(path: Path) -> int:
    with np.load(path, allow_pickle=False) as data:
        return int(data["done"].size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes-per-worker", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--policy", default="random", choices=["random", "brownian"])
    args = parser.parse_args(argv)
    n, t = args.episodes_per_worker, args.max_steps

    if n < 2:
        parser.error("--episodes-per-worker must be >= 2 (the first one is start-up)")

    ensure_ray(None, workers=2)
    bare = bare_steps_per_s(n, t)
    one_total, one = collect_frames_per_s(1, n, t, args.policy)
    two_total, two = collect_frames_per_s(2, 2 * n, t, args.policy)

    per_worker, scaling = one / bare, two / one
    print(f"{n} episodes of {t} steps per worker, policy {args.policy}")
    print(f"bare gymnasium CarRacing-v3:  {bare:7.1f} steps/s")
    print(f"collect, 1 Ray worker:        {one:7.1f} frames/s steady "
          f"({one_total:.1f} end to end, actor start-up included)")
    print(f"collect, 2 Ray workers:       {two:7.1f} frames/s steady "
          f"({two_total:.1f} end to end)")
    print(f"per worker / bare env:        {per_worker:5.2f}  (target >= {PER_WORKER_TARGET}) "
          f"{'ok' if per_worker >= PER_WORKER_TARGET else 'BELOW TARGET'}")
    print(f"2 workers / 1 worker:         {scaling:5.2f}  (target >= {TWO_WORKER_TARGET}) "
          f"{'ok' if scaling >= TWO_WORKER_TARGET else 'BELOW TARGET'}")

if __name__ == "__main__":
    main()
