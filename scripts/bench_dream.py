"""Batched dream steps/s against two references measured in the same run, on one core:

- bare CarRacing-v3 steps/s (random actions, no preprocessing): target ratio >= 300;
- the machine's own matmul FLOP/s (a square float32 matmul): the dream's FLOPs per step
  (its matmuls: LSTM, heads, controller) times its steps/s, as a fraction of that bound;
  target >= 0.5.

    python scripts/bench.py dream [--batch 1024] [--steps 200] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def carracing_steps_per_s(steps: int) -> float:
    import gymnasium as gym

    env = gym.make("CarRacing-v3")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform([-1, 0, 0], [1, 1, 1], (steps, 3)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds


def matmul_flops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def make_dream(batch: int, steps: int):
    from worldmodels.config import MDNRNNConfig
    from worldmodels.env.dream import BatchedDream
    from worldmodels.models.controller import param_count
    from worldmodels.models.mdnrnn import MDNRNN

    torch.manual_seed(0)
    config = MDNRNNConfig()  # the paper's M: LSTM 256, 5 Gaussians per z dim
    mdnrnn = MDNRNN(config).eval()
    with torch.no_grad():
        mdnrnn.done.bias.fill_(-100.0)  # no dream ends: every row steps all `steps`
    starts = (torch.randn(16, config.z_size), torch.full((16, config.z_size), -2.0))
    dream = BatchedDream(mdnrnn, starts, tau=1.15, max_steps=steps)
    params = np.random.default_rng(0).normal(
        0, 0.1, (batch, param_count(config.z_size, config.hidden_size)))
    dream.rollout(params, np.arange(batch))  # warm-up (allocations, kernels)
    return dream, params


def dream_steps_per_s(dream, params, repeat: int) -> float:
    start = time.perf_counter()
    dream.rollout(params, np.arange(len(params)) + 1000 * (repeat + 1))
    return len(params) * dream.max_steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="batched dream steps/s vs CarRacing and FLOPs")
    parser.add_argument("--batch", type=int, default=1024, help="dreams at once (64 x 16)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per core)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    # The machine may be shared: rounds interleave the three measurements and each keeps
    # its best, so all three see the same quiet moments.
    dream_env, params = make_dream(args.batch, args.steps)
    real = flops = dream = 0.0
    for repeat in range(args.rounds):
        real = max(real, carracing_steps_per_s(100))
        flops = max(flops, matmul_flops())
        dream = max(dream, dream_steps_per_s(dream_env, params, repeat))
    flops_per_step = dream_env.flops_per_step()
    achieved = dream * flops_per_step
    print(f"threads {args.threads}, batch {args.batch} dreams x {args.steps} steps "
          "(M: LSTM 256, 5 Gaussians x 32 dims; C: 867 params per row)")
    print(f"bare CarRacing-v3:      {real:10.0f} steps/s")
    print(f"batched dream:          {dream:10.0f} steps/s   = {dream / real:.0f}x CarRacing "
          f"(target >= 300x per core)")
    print(f"matmul bound:           {flops / 1e9:10.1f} GFLOP/s (1024^3 float32 matmul)")
    print(f"dream matmul work:      {achieved / 1e9:10.1f} GFLOP/s ({flops_per_step / 1e6:.2f} "
          f"MFLOP per dream step) = {achieved / flops:.2f} of the bound (target >= 0.5)")


if __name__ == "__main__":
    main()
