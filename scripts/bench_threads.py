"""V and M training on shared cores, under OpenMP's wait policies.

    python scripts/bench.py threads [--steps 6]

Each measurement is a fresh process timing bare Adam steps with torch's default threads,
with OMP_WAIT_POLICY unset (OpenMP's default: a waiting thread spins a while before it
sleeps) or PASSIVE (what importing `worldmodels` sets), once with the cores to itself and
once beside a busy process that holds one core (as a second run or another job's Ray worker
would). The models: V (z 64, batch 64) and M at the `medium` preset's shape (256 units,
batch 64 x 100), the smallest M that trains on more than one thread. Ratios against the
default alone, measured in the same run: PASSIVE should cost little alone (~1.0), and
beside a busy process it should keep about the one core left (~0.5).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import time, torch
from worldmodels.config import MDNRNNConfig, VAEConfig
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.vae import ConvVAE
torch.manual_seed(0)
if {model!r} == "V":
    model = ConvVAE(VAEConfig(z_size=64))
    frames = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8)
    loss_of = lambda: model.loss(frames)[0]
else:
    model = MDNRNN(MDNRNNConfig(hidden_size=256))
    z, action = torch.randn(64, 101, 32), torch.rand(64, 100, 3)
    def loss_of():
        mixture, reward, done, _ = model(z[:, :-1], action)
        return mixture.nll(z[:, 1:]).mean() + reward.square().mean() + done.square().mean()
optimizer = torch.optim.Adam(model.parameters(), 3e-4)
for i in range({steps} + 2):
    if i == 2:  # the first steps warm up allocators and kernels
        start = time.perf_counter()
    loss = loss_of()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
print({steps} / (time.perf_counter() - start))
"""
BUSY = "while True: pass"


def steps_per_s(model: str, policy: str, shared: bool, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if shared else None
    try:
        out = subprocess.run([sys.executable, "-c", CHILD.format(model=model, steps=steps)],
                             env=env, capture_output=True, text=True, check=True)
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
