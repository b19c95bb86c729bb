"""Train M (the MDN-RNN) on the encoded episodes of a run; resumable per epoch.

Teacher forcing: each batch draws z ~ N(mu, exp(logvar)) for every step of its windows;
step t sees (z_t, a_t) and is scored on z_{t+1} (factorised mixture NLL), reward_t (MSE)
and done_t (BCE with a positive weight, since dones are rare). The training loss averages
the NLL over latent dimensions (so the reward and done terms are not drowned out); the
reported `z_nll` is per step, summed over dimensions, in nats.

Writes RUN/mdnrnn.pt + mdnrnn.json, RUN/logs/mdnrnn.csv (per epoch, with held-out
losses), RUN/logs/mdnrnn_steps.csv and TensorBoard scalars. Every epoch seeds its own
windows and z samples from (config.seed, epoch), so a resumed run matches an unbroken one.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from worldmodels import checkpoint
from worldmodels.config import MDNRNNConfig, warn_ignored_on_resume
from worldmodels.data.latents import SequenceBatch, SequenceSampler, list_latents, read_latents
from worldmodels.data.rollouts import split_holdout
from worldmodels.errors import UserError
from worldmodels.logger import RunLogger
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config

EVAL_SEED = 12_345  # fixed z samples for the held-out set: comparable across epochs
# Below this many LSTM units x batch rows, one step's matmuls are too small to split across
# threads: on 2 shared cores, 1 thread ran 14.5 steps/s and 2 threads 5.5 (hidden 256, batch 16).
ONE_THREAD_BELOW = 64 * 256


@contextmanager
def rnn_threads(config: MDNRNNConfig):
    before = torch.get_num_threads()
    if config.batch_size * config.hidden_size < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_sampler(paths: list[Path], seq_len: int) -> SequenceSampler | None:
    if not paths:
        return None
    return SequenceSampler([read_latents(p) for p in paths], seq_len)


def done_pos_weight(config: MDNRNNConfig, sampler: SequenceSampler) -> float:
    """config.done_pos_weight, or negatives / positives in the training data."""
    if config.done_pos_weight > 0:
        return config.done_pos_weight
    positives = float(sampler.done.sum())
    return (len(sampler.done) - positives) / positives if positives else 1.0


def batch_losses(model: MDNRNN, batch: SequenceBatch, pos_weight: Tensor,
                 generator: torch.Generator) -> dict[str, Tensor]:
    """Masked means over the batch: z_nll (nats per step, summed over dims), reward_mse,
    done_bce."""
    mu, logvar = torch.from_numpy(batch.mu), torch.from_numpy(batch.logvar)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
    mixture, reward, done_logit, _ = model(z[:, :-1], torch.from_numpy(batch.action))
    mask = torch.from_numpy(batch.mask).float()
    z_mask = torch.from_numpy(batch.z_mask).float()
    z_nll = (mixture.nll(z[:, 1:]) * z_mask).sum() / z_mask.sum().clamp_min(1)
    reward_err = (reward - torch.from_numpy(batch.reward)).square()
    bce = F.binary_cross_entropy_with_logits(
        done_logit, torch.from_numpy(batch.done), pos_weight=pos_weight, reduction="none")
    n = mask.sum().clamp_min(1)
    return {"z_nll": z_nll, "reward_mse": (reward_err * mask).sum() / n,
            "done_bce": (bce * mask).sum() / n, "steps": mask.sum(), "z_steps": z_mask.sum()}


def total_loss(losses: dict[str, Tensor], config: MDNRNNConfig) -> Tensor:
    return (losses["z_nll"] / config.z_size + config.reward_weight * losses["reward_mse"]
            + config.done_weight * losses["done_bce"])


@torch.no_grad()
def evaluate(model: MDNRNN, sampler: SequenceSampler | None, config: MDNRNNConfig,
             pos_weight: Tensor) -> dict[str, float]:
    names = ("z_nll", "reward_mse", "done_bce")
    if sampler is None:
        return {f"valid_{k}": float("nan") for k in names}
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    sums = dict.fromkeys(names, 0.0)
    steps = z_steps = 0.0
    for batch in sampler.epoch(max(config.batch_size, 64), rng=None):
        losses = batch_losses(model, batch, pos_weight, generator)
        sums["z_nll"] += losses["z_nll"].item() * losses["z_steps"].item()
        for k in ("reward_mse", "done_bce"):
            sums[k] += losses[k].item() * losses["steps"].item()
        steps += losses["steps"].item()
        z_steps += losses["z_steps"].item()
    return {"valid_z_nll": sums["z_nll"] / max(z_steps, 1),
            "valid_reward_mse": sums["reward_mse"] / max(steps, 1),
            "valid_done_bce": sums["done_bce"] / max(steps, 1)}


def train_mdnrnn(run: Path, config: MDNRNNConfig, resume: bool = False,
                 progress: bool = True) -> None:
    """Train (or with `resume`, continue) M of `run` on RUN/latents (made by `encode`)."""
    paths = RunPaths(Path(run))
    paths.writable()
    paths.require(paths.vae, "train-vae")
    paths.require(paths.latents, "encode")
    files = list_latents(paths.latents)
    if not files:
        raise UserError(f"{paths.latents}: no encoded episodes; run `worldmodels encode` first")
    ckpt = paths.mdnrnn
    payload: dict = {}
    if ckpt.exists() and not resume:
        raise UserError(f"{ckpt} exists; pass --resume to continue it or choose another --run")
    if resume and ckpt.exists():
        model, payload = checkpoint.load_model(ckpt, MDNRNN, MDNRNNConfig)
        warn_ignored_on_resume("train-mdnrnn", config, model.config)
        epochs = config.epochs
        config = model.config  # the run's own config wins; only the epoch count may change
        config.epochs = epochs
    else:
        torch.manual_seed(config.seed)
        model = MDNRNN(config)

    train_files, valid_files = split_holdout(files, config.holdout_episodes)
    train_set = load_sampler(train_files, config.seq_len)
    valid_set = load_sampler(valid_files, config.seq_len)
    z_size = train_set.mu.shape[1]
    if z_size != config.z_size:
        raise UserError(f"{paths.latents}: latents have z size {z_size} but the M config "
                        f"says z_size {config.z_size}")
    pos_weight = torch.tensor(payload.get("done_pos_weight", done_pos_weight(config, train_set)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    if payload:
        optimizer.load_state_dict(payload["optimizer"])
    start_epoch, step = int(payload.get("epoch", 0)), int(payload.get("step", 0))
    if start_epoch >= config.epochs and progress:
        tqdm.write(f"train-mdnrnn: {ckpt} already has {start_epoch} epochs; nothing to do")

    logger = RunLogger(paths.logs, "mdnrnn", keep_through=step)
    step_logger = RunLogger(paths.logs, "mdnrnn_steps", keep_through=step)
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            with rnn_threads(config):
                step, means, n_batches = _train_epoch(model, optimizer, train_set, config,
                                                      pos_weight, epoch, step, step_logger,
                                                      progress)
                seconds = time.perf_counter() - t0
                result = evaluate(model, valid_set, config, pos_weight)
            logger.log(step, epoch=epoch + 1, **means, **result,
                       steps_per_s=n_batches / seconds, epoch_seconds=seconds)
            checkpoint.save(ckpt, model, config, {
                "kind": "mdnrnn", "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                "step": step, "done_pos_weight": float(pos_weight),
            })
            if progress:
                tqdm.write(f"train-mdnrnn epoch {epoch + 1}: z NLL {means['z_nll']:.2f} "
                           f"nats/step (held-out {result['valid_z_nll']:.2f}), reward MSE "
                           f"{means['reward_mse']:.3f}, done BCE {means['done_bce']:.3f}")
    finally:
        logger.close()
        step_logger.close()


def _train_epoch(model: MDNRNN, optimizer: torch.optim.Optimizer, train_set: SequenceSampler,
                 config: MDNRNNConfig, pos_weight: Tensor, epoch: int, step: int,
                 step_logger: RunLogger, progress: bool) -> tuple[int, dict[str, float], int]:
    """One pass over the training windows: (step, mean losses, batches)."""
    model.train()
    seed = config.seed * 100_003 + epoch  # windows and z samples of this epoch
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    names = ("loss", "z_nll", "reward_mse", "done_bce")
    sums, n_batches = np.zeros(len(names)), 0
    bar = progress_bar(train_set.epoch(config.batch_size, rng),
               total=train_set.batches_per_epoch(config.batch_size),
               desc=f"train-mdnrnn epoch {epoch + 1}/{config.epochs}", unit="batch",
               disable=not progress, leave=False)
    for batch in bar:
        losses = batch_losses(model, batch, pos_weight, generator)
        losses["loss"] = total_loss(losses, config)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        n_batches += 1
        values = {k: losses[k].item() for k in names}
        sums += list(values.values())
        bar.set_postfix(z_nll=f"{values['z_nll']:.2f}")
        if step % 20 == 0:
            step_logger.log(step, **values)
    return step, dict(zip(names, sums / max(n_batches, 1), strict=True)), n_batches


def cli_train_mdnrnn(args: argparse.Namespace) -> int:
    paths = RunPaths(args.run)
    paths.require(paths.vae, "train-vae")  # before load_run_config makes a config there
    config = load_run_config(paths).mdnrnn
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.seq_len is not None:
        config.seq_len = args.seq_len
    if args.batch_size is not None:
        config.batch_size = args.batch_size
    train_mdnrnn(args.run, config, resume=args.resume)
    print(f"train-mdnrnn: M -> {paths.mdnrnn}")
    return 0
