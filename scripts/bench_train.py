"""Training speed of V and M against their bare compute, and train-vae's memory vs data size.

    python scripts/bench.py train [--data DIR] [--episodes 4] [--max-steps 200] [--threads N]
                                  [--rss-episodes 4] [--rss-steps 150]

1. V: `train_vae` images/s on real episodes (collected here unless --data is given) against
   a bare Adam step of the same ConvVAE on an in-memory batch: the ratio is what streaming
   (reading, decompressing, shuffling) leaves of the compute speed (target >= 0.85).
2. M: `train_mdnrnn` steps/s on those episodes encoded, against bare steps of the same
   MDN-RNN on random tensors of the same shapes (target >= 0.85).
3. M with dropout masks: forward and backward of the LSTM with variational masks as M trains
   it (`MaskedLSTM`) against autograd through M's plain `step()` loop with the same masks
   (target >= 1.15x), and against `nn.LSTM` without masks (what dropout costs), at Take
   Cover's size (hidden 512, batch 16 x 100 steps).
4. Memory: peak RSS of `worldmodels train-vae` run as a subprocess on a dir of N synthetic
   episodes and on one of 10 N, with a shuffle buffer that the small dir already fills:
   the ratio says whether memory grows with the number of episodes (target <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels.config import CollectConfig, MDNRNNConfig, PipelineConfig, VAEConfig, save_json
from worldmodels.data.collect import collect
from worldmodels.data.latents import SequenceSampler, list_latents, read_latents
from worldmodels.data.rollouts import Episode, write_episode
from worldmodels.logger import read_csv
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.train.encode import encode
from worldmodels.train.mdnrnn import (
    batch_losses,
    done_pos_weight,
    rnn_threads,
    total_loss,
    train_mdnrnn,
)
from worldmodels.train.vae import train_vae

SPEED_TARGET = 0.85
MASKED_TARGET = 1.15
RSS_TARGET = 1.2
VAE = VAEConfig(epochs=3, batch_size=64, shuffle_buffer=2000, holdout_episodes=0.0)
M = MDNRNNConfig(hidden_size=256, seq_len=100, batch_size=4, epochs=6, holdout_episodes=0.0)


def bare_vae_images_per_s(batch_size: int, batches: int = 10) -> float:
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    frames = torch.randint(0, 256, (batch_size, 64, 64, 3), dtype=torch.uint8)
    for i in range(batches + 1):
        if i == 1:  # the first step warms up allocators and kernels
            start = time.perf_counter()
        loss, _, _ = model.loss(frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch_size * batches / (time.perf_counter() - start)


def bare_mdnrnn_steps_per_s(config: MDNRNNConfig, sampler: SequenceSampler,
                            steps: int = 20) -> float:
    """The same losses and Adam step on one pre-made batch (no sampling, no logging)."""
    torch.manual_seed(0)
    model = MDNRNN(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    group = sampler.plan(config.batch_size, np.random.default_rng(0), carry_state=False)[0]
    batch = sampler.batch(group.episode, group.start)
    pos_weight, generator = torch.tensor(done_pos_weight(config, sampler)), torch.Generator()
    with rnn_threads(config):
        for i in range(steps + 1):
            if i == 1:
                start = time.perf_counter()
            loss = total_loss(batch_losses(model, batch, pos_weight, generator)[0], config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
    return steps / (time.perf_counter() - start)


def masked_lstm_passes_per_s(hidden: int = 512, batch: int = 16, steps: int = 100,
                              repeats: int = 5) -> dict[str, float]:
    """Forward + backward passes/s of M's LSTM three ways on the same inputs and masks."""
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(hidden_size=hidden, z_size=64, action_size=1, dropout=0.05))
    z, action = torch.randn(batch, steps, 64), torch.randn(batch, steps, 1)
    masks = model.dropout_masks(batch, torch.Generator().manual_seed(0))

    # Each returns the final h, so all three backpropagate the same loss through all steps.
    def masked() -> torch.Tensor:
        return model(z, action, masks=masks)[-1][0]

    def plain_loop() -> torch.Tensor:
        state = model.initial_state(batch)
        for t in range(steps):
            state = model.step(z[:, t], action[:, t], state, masks)
        return state[0]

    def unmasked() -> torch.Tensor:
        return model.lstm(torch.cat([z, action], -1))[1][0]

    speeds = {}
    for name, fn in (("masked", masked), ("plain", plain_loop), ("nn.LSTM", unmasked)):
        fn().sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            fn().sum().backward()
        speeds[name] = repeats / (time.perf_counter() - start)
    return speeds


def synthetic_episodes(directory: Path, episodes: int, steps: int) -> None:
    """Episodes of smooth moving blobs: they compress like real frames do, and cost no sim."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for seed in range(episodes):
        centre = rng.uniform(10, 54, 2) + np.cumsum(rng.normal(0, 0.5, (steps, 2)), 0)
        blob = np.exp(-((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) / 60)
        obs = np.stack([blob * 200, blob * 120 + 60, 100 - blob * 90], -1).astype(np.uint8)
        action = rng.uniform(-1, 1, (steps, 3)).astype(np.float32)
        done = np.zeros(steps, bool)
        done[-1] = True
        write_episode(directory / f"episode_{seed:08d}.npz", Episode(
            obs, action, rng.normal(size=steps).astype(np.float32), done, seed, "synthetic"))


def train_vae_peak_rss_mb(data: Path, run: Path, config: VAEConfig) -> float:
    """Peak RSS of one `worldmodels train-vae` process (its own rusage, via wait4)."""
    run.mkdir(parents=True)
    save_json(PipelineConfig(vae=config), run / "config.json")
    cli = [sys.executable, "-m", "worldmodels.cli", "train-vae", "--data", str(data),
           "--run", str(run)]
    process = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"train-vae failed: {process.stderr.read().decode()[-500:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="real episodes (default: collect --episodes here)")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--rss-episodes", type=int, default=4, help="the small dir; large: 10x")
    parser.add_argument("--rss-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the speed part (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "real"
            collect(data, CollectConfig(episodes=args.episodes, max_steps=args.max_steps,
                                        workers=0), progress=False)
        print(f"threads: {torch.get_num_threads()}; data: {data}")

        # A shared machine is noisy: each speed is the best of several measurements, with the
        # reference measured before and after, and the first (warm-up) epoch left out.
        bare_vae = bare_vae_images_per_s(VAE.batch_size)
        train_vae(data, tmp / "run", VAE, progress=False)
        bare_vae = max(bare_vae, bare_vae_images_per_s(VAE.batch_size))
        vae_rows = read_csv(tmp / "run" / "logs" / "vae.csv")
        vae_speed = max(r["images_per_s"] for r in vae_rows[1:])

        encode(tmp / "run", data, progress=False)
        sampler = SequenceSampler([read_latents(p) for p in list_latents(tmp / "run" / "latents")],
                                  M.seq_len)
        bare_m = bare_mdnrnn_steps_per_s(M, sampler)
        train_mdnrnn(tmp / "run", M, progress=False)
        bare_m = max(bare_m, bare_mdnrnn_steps_per_s(M, sampler))
        m_rows = read_csv(tmp / "run" / "logs" / "mdnrnn.csv")
        m_speed = max(r["steps_per_s"] for r in m_rows[1:])
        lstm_runs = [masked_lstm_passes_per_s() for _ in range(2)]
        lstm = {name: max(run[name] for run in lstm_runs) for name in lstm_runs[0]}

        small, large = tmp / "small", tmp / "large"
        synthetic_episodes(small, args.rss_episodes, args.rss_steps)
        synthetic_episodes(large, 10 * args.rss_episodes, args.rss_steps)
        frames = args.rss_episodes * args.rss_steps
        rss_config = VAEConfig(epochs=1, batch_size=64, shuffle_buffer=frames // 2,
                               holdout_episodes=0.1)
        rss_small = train_vae_peak_rss_mb(small, tmp / "rss_small", rss_config)
        rss_large = train_vae_peak_rss_mb(large, tmp / "rss_large", rss_config)

    vae_ratio, m_ratio, rss_ratio = vae_speed / bare_vae, m_speed / bare_m, rss_large / rss_small
    masked_ratio = lstm["masked"] / lstm["plain"]
    def verdict(ok: bool) -> str:
        return "ok" if ok else "OFF TARGET"

    print(f"V  bare Adam step, batch {VAE.batch_size}:      {bare_vae:8.1f} images/s")
    print(f"V  train_vae (streamed from files):  {vae_speed:8.1f} images/s   ratio "
          f"{vae_ratio:.2f} (target >= {SPEED_TARGET}) {verdict(vae_ratio >= SPEED_TARGET)}")
    print(f"M  bare step, hidden {M.hidden_size}, batch {M.batch_size}x{M.seq_len}: "
          f"{bare_m:8.1f} steps/s")
    print(f"M  train_mdnrnn:                     {m_speed:8.1f} steps/s    ratio "
          f"{m_ratio:.2f} (target >= {SPEED_TARGET}) {verdict(m_ratio >= SPEED_TARGET)}")
    print(f"M  LSTM with dropout masks, autograd through step(): {lstm['plain']:6.2f} passes/s")
    print(f"M  LSTM with dropout masks, MaskedLSTM:              {lstm['masked']:6.2f} passes/s"
          f"   ratio {masked_ratio:.2f} (target >= {MASKED_TARGET}) "
          f"{verdict(masked_ratio >= MASKED_TARGET)}")
    print(f"M  nn.LSTM without masks:                            {lstm['nn.LSTM']:6.2f} passes/s"
          f"   (MaskedLSTM at {lstm['masked'] / lstm['nn.LSTM']:.2f} of it)")
    print(f"train-vae peak RSS, {frames} frames:       {rss_small:8.1f} MB")
    print(f"train-vae peak RSS, {10 * frames} frames:      {rss_large:8.1f} MB   ratio "
          f"{rss_ratio:.2f} (target <= {RSS_TARGET}) {verdict(rss_ratio <= RSS_TARGET)}")


if __name__ == "__main__":
    main()
