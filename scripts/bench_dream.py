"""Batched dream steps/s against two references measured in the same run, on one core:

- bare CarRacing-v3 steps/s (random actions, no preprocessing): target ratio >= 300;
- the machine's own matmul FLOP/s (a square float32 matmul): the dream's FLOPs per step
  (its matmuls: LSTM, heads, controller) times its steps/s, as a fraction of that bound;
  target >= 0.5;
- dreams that end (Take Cover's deaths, a coin with a mean of 75 steps, up to 1000): their
  live steps/s against the same batch of dreams that never end; target >= 0.5 (rows that
  ended leave the batch, so the survivors do not drag the dead along).

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


def make_dream(batch: int, steps: int, mean_life: float = 0.0):
    """A dream of the paper's M; `mean_life` > 0: each step ends a dream by a coin with
    probability 1 / mean_life (the `sample` rule), else no dream ends."""
    from worldmodels.config import MDNRNNConfig
    from worldmodels.env.dream import BatchedDream
    from worldmodels.models.controller import param_count
    from worldmodels.models.mdnrnn import MDNRNN

    torch.manual_seed(0)
    config = MDNRNNConfig()  # the paper's M: LSTM 256, 5 Gaussians per z dim
    mdnrnn = MDNRNN(config).eval()
    with torch.no_grad():
        mdnrnn.done.weight.zero_()
        # No dream ends (every row steps all `steps`), or a constant logit of 1 / mean_life.
        mdnrnn.done.bias.fill_(-np.log(mean_life - 1) if mean_life else -100.0)
    starts = (torch.randn(16, config.z_size), torch.full((16, config.z_size), -2.0))
    dream = BatchedDream(mdnrnn, starts, tau=1.15, max_steps=steps,
                         done="sample" if mean_life else "threshold")
    params = np.random.default_rng(0).normal(
        0, 0.1, (batch, param_count(config.z_size, config.hidden_size)))
    dream.rollout(params, np.arange(batch))  # warm-up (allocations, kernels)
    return dream, params


def dream_steps_per_s(dream, params, repeat: int) -> float:
    """Live dream steps (summed over rows, each until it ends) per second."""
    start = time.perf_counter()
    _, steps = dream.rollout(params, np.arange(len(params)) + 1000 * (repeat + 1),
                             with_steps=True)
    return steps.sum() / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="batched dream steps/s vs CarRacing and FLOPs")
    parser.add_argument("--batch", type=int, default=1024, help="dreams at once (64 x 16)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per core)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dying-batch", type=int, default=256,
                        help="dreams at once in the deaths measurement (a worker's 512 / 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    # The machine may be shared: rounds interleave the three measurements and each keeps
    # its best, so all three see the same quiet moments.
    dream_env, params = make_dream(args.batch, args.steps)
    immortal_env, immortal_params = make_dream(args.dying_batch, 200)
    dying_env, dying_params = make_dream(args.dying_batch, 1000, mean_life=75)
    real = flops = dream = immortal = dying = 0.0
    for repeat in range(args.rounds):
        real = max(real, carracing_steps_per_s(100))
        flops = max(flops, matmul_flops())
        dream = max(dream, dream_steps_per_s(dream_env, params, repeat))
        immortal = max(immortal, dream_steps_per_s(immortal_env, immortal_params, repeat))
        dying = max(dying, dream_steps_per_s(dying_env, dying_params, repeat))
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
    print(f"dreams that end:        {dying:10.0f} live steps/s = {dying / immortal:.2f} of "
          f"{immortal:.0f} for {args.dying_batch} that never end (target >= 0.5)")


if __name__ == "__main__":
    main()
