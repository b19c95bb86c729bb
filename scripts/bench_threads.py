"""V and M training on shared cores, under OpenMP's wait policies.

    python scripts/bench.py threads [--steps 6]

Each measurement is a fresh process timing bare Adam steps with torch's default threads,
with OMP_WAIT_POLICY unset (OpenMP's default: a waiting thread spins a while before it
sleeps) or PASSIVE (what importing `worldmodels` sets), once with the cores to itself and
once beside a busy process that holds one core (as a second run or another job's Ray worker
would). The steps are `bench.py train`'s bare ones: V (batch 64) and M at the `medium`
preset's shape (256 units, batch 64 x 100), the smallest M that trains on more than one
thread. Ratios against the
default alone, measured in the same run: PASSIVE should cost little alone (~1.0), and
beside a busy process it should keep about the one core left (~0.5).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# The child imports torch before anything from `worldmodels` (which would set PASSIVE), so
# the policy each child runs under is the one its environment gives.
CHILD = """
import sys, torch
sys.path.insert(0, {scripts!r})
from bench_threads import child_steps_per_s
print(child_steps_per_s({model!r}, {steps}))
"""
BUSY = "while True: pass"


def child_steps_per_s(model: str, steps: int) -> float:
    """In the child: the bare training steps `bench.py train` times, of V (z 32, batch 64)
    or of M at the `medium` preset's shape on random latents."""
    import numpy as np
    from bench_train import bare_mdnrnn_steps_per_s, bare_vae_images_per_s

    from worldmodels.config import MDNRNNConfig
    from worldmodels.data.latents import Latents, SequenceSampler

    if model == "V":
        return bare_vae_images_per_s(64, steps) / 64
    rng, steps_each = np.random.default_rng(0), 200
    z = rng.normal(size=(64, steps_each, 32)).astype(np.float16)
    action = rng.uniform(-1, 1, (64, steps_each, 3)).astype(np.float32)
    episodes = [Latents(z[i], np.zeros_like(z[i]), action[i], np.zeros(steps_each, np.float32),
                        np.arange(steps_each) == steps_each - 1) for i in range(64)]
    config = MDNRNNConfig(hidden_size=256, seq_len=100, batch_size=64)
    return bare_mdnrnn_steps_per_s(config, SequenceSampler(episodes, config.seq_len), steps)


def steps_per_s(model: str, policy: str, shared: bool, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if shared else None
    try:
        code = CHILD.format(scripts=str(Path(__file__).resolve().parent), model=model,
                            steps=steps)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.py threads")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    print(f"training steps/s with torch's default threads on {os.cpu_count()} cores:")
    for model in ("V", "M"):
        speeds = {(policy, shared): steps_per_s(model, policy, shared, args.steps)
                  for shared in (False, True) for policy in ("default", "PASSIVE")}
        reference = speeds[("default", False)]
        for (policy, shared), speed in speeds.items():
            where = "beside a busy process" if shared else "alone"
            print(f"  {model} {policy:7s} {where:22s} {speed:6.2f} steps/s = "
                  f"{speed / reference:.2f} of the default alone")
