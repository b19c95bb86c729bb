"""Real-episode frames/s of `worldmodels evaluate` on one worker (the serial path, the same
code a Ray actor runs) against bare CarRacing-v3 steps/s, measured in the same run on the
same episodes (seeds, lengths, resets). Target ratio >= 0.85.

The run has the paper's sizes (V: z 32; M: LSTM 256, 5 Gaussians) with random weights and a
controller that holds the gas, so every episode runs its full length.

    python scripts/bench.py evaluate [--episodes 8] [--max-steps 100] [--envs 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldmodels import checkpoint
from worldmodels.agent import save_starts
from worldmodels.config import EvaluateConfig, MDNRNNConfig, VAEConfig
from worldmodels.evaluate import evaluate
from worldmodels.models.controller import param_count
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.run import RunPaths


def make_bench_run(root: Path) -> Path:
    paths = RunPaths(root)
    torch.manual_seed(0)
    vae, mdnrnn = ConvVAE(VAEConfig()), MDNRNN(MDNRNNConfig())
    checkpoint.save(paths.vae, vae, vae.config)
    checkpoint.save(paths.mdnrnn, mdnrnn, mdnrnn.config)
    save_starts(paths.dream_starts, (torch.zeros(4, 32), torch.zeros(4, 32)))
    params = np.zeros(param_count(32, 256), np.float32)
    params[-2] = 3.0  # gas held: the car drives, no episode ends early
    np.save(paths.controller, params)
    return paths.root


def carracing_steps_per_s(seeds: list[int], steps: int) -> float:
    env = gym.make("CarRacing-v3")
    rng = np.random.default_rng(0)
    total, start = 0, time.perf_counter()
    for seed in seeds:
        env.reset(seed=seed)
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(rng.uniform([-1, 0, 0], [1, 1, 1]))
            total += 1
            if terminated or truncated:
                break
    seconds = time.perf_counter() - start
    env.close()
    return total / seconds


def evaluate_frames_per_s(run: Path, config: EvaluateConfig) -> float:
    start = time.perf_counter()
    summary = evaluate(run, config, progress=False, device="cpu")
    return sum(summary["steps"]) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="evaluate frames/s vs bare CarRacing steps/s")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--envs", type=int, default=8, help="envs per worker")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    config = EvaluateConfig(episodes=args.episodes, seed=0, max_steps=args.max_steps,
                            workers=0, envs_per_worker=args.envs)
    seeds = list(range(args.episodes))
    with tempfile.TemporaryDirectory() as tmp:
        run = make_bench_run(Path(tmp))
        # The machine may be shared: rounds interleave the two and each keeps its best.
        bare = agent = 0.0
        for _ in range(args.rounds):
            bare = max(bare, carracing_steps_per_s(seeds, args.max_steps))
            agent = max(agent, evaluate_frames_per_s(run, config))
    print(f"{args.episodes} episodes x {args.max_steps} steps, {args.envs} envs per worker, "
          "one worker (V z 32, M LSTM 256, C 867 params)")
    print(f"bare CarRacing-v3:   {bare:8.1f} steps/s")
    print(f"worldmodels evaluate: {agent:7.1f} frames/s = {agent / bare:.2f} of bare "
          "(target >= 0.85)")


if __name__ == "__main__":
    main()
