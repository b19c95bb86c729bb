"""Train M (the MDN-RNN) on the encoded episodes of a run; resumable per epoch.

Teacher forcing: each batch draws z ~ N(mu, exp(logvar)) for every step of its windows;
step t sees (z_t, a_t) and is scored on z_{t+1} (mixture NLL), reward_t (MSE)
and done_t (BCE with a positive weight, since dones are rare). The training loss averages
the NLL over latent dimensions (so the reward and done terms are not drowned out); the
reported `z_nll` is per step, summed over dimensions, in nats.

Horizon: with `carry_state` (the default) every batch row walks whole episodes from step 0
and the LSTM state, detached, is carried from one window to the next (truncated
backpropagation through time), so h is trained as the dream uses it, up to the last step.
The held-out set is always scored that way, whole episodes from h = 0, and its losses are
also logged per position bucket (steps 0-100, 100-300, 300+) to show where M is weak.

A new M's done head starts at the log-odds of the data's done rate, so an untrained head
does not end every dream at once (strongly negative when the data has no done step).

Writes RUN/mdnrnn.pt + mdnrnn.json, RUN/logs/mdnrnn.csv (per epoch, with held-out
losses), RUN/logs/mdnrnn_steps.csv and TensorBoard scalars. Every epoch seeds its own
windows, z samples and dropout masks from (config.seed, epoch), so a resumed run matches an
unbroken one.
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from worldmodels import checkpoint
from worldmodels.config import MDNRNNConfig, check_fields
from worldmodels.data.latents import (
    SequenceBatch,
    SequenceSampler,
    WindowGroup,
    list_latents,
    read_good_latents,
)
from worldmodels.data.rollouts import split_holdout
from worldmodels.device import resolve_device
from worldmodels.errors import UserError
from worldmodels.logger import RunLogger
from worldmodels.models.mdnrnn import MDNRNN, DropoutMasks, LSTMState
from worldmodels.progress import progress_bar
from worldmodels.run import RunPaths, load_run_config

EVAL_SEED = 12_345  # fixed z samples for the held-out set: comparable across epochs
# Below this many LSTM units x batch rows, one step's matmuls are too small to split across
# threads: on 2 shared cores, 1 thread ran 14.5 steps/s and 2 threads 5.5 (hidden 256, batch 16).
ONE_THREAD_BELOW = 64 * 256
# Held-out losses per position in the episode: [lo, hi) steps; None: to the end.
POSITION_BUCKETS = ((0, 100), (100, 300), (300, None))
LOSSES = ("z_nll", "reward_mse", "done_bce")
# Settings a checkpoint was trained with that a resumed run may not change.
FIXED_ON_RESUME = ("seq_len", "carry_state", "dropout", "mixture")


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
    """All readable episodes of `paths` (bad files skipped with a warning), or None."""
    episodes = read_good_latents(paths)
    return SequenceSampler(episodes, seq_len) if episodes else None


def done_pos_weight(config: MDNRNNConfig, sampler: SequenceSampler) -> float:
    """config.done_pos_weight, or negatives / positives in the training data."""
    if config.done_pos_weight > 0:
        return config.done_pos_weight
    positives = float(sampler.done.sum())
    return (len(sampler.done) - positives) / positives if positives else 1.0


def done_prior_logit(sampler: SequenceSampler) -> float:
    """Log-odds of a step being done in the data; with no done step, those of half a done
    in all the steps (a strongly negative start, not minus infinity)."""
    rate = max(float(sampler.done.sum()), 0.5) / len(sampler.done)
    return math.log(rate / (1.0 - rate)) if rate < 1 else 0.0


def epoch_learning_rate(config: MDNRNNConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (from 0) of config.epochs: a function of the two
    alone, so a run resumed with the same epochs trains at the rates an unbroken one would."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    if config.lr_schedule == "cosine":
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class CarriedState:
    """Each lane's LSTM state and dropout masks between its windows. A window that starts an
    episode (step 0) starts from h = 0 with fresh masks; any other continues its lane.
    Masks are drawn on the CPU (the epoch's generator) and copied to M's device."""

    def __init__(self, model: MDNRNN, lanes: int, generator: torch.Generator):
        hidden, self.device = model.config.hidden_size, model_device(model)
        self.model, self.generator = model, generator
        self.h = torch.zeros(lanes, hidden, device=self.device)
        self.c = torch.zeros(lanes, hidden, device=self.device)
        self.masks = self._masks(lanes)

    def _masks(self, batch: int) -> DropoutMasks | None:
        masks = self.model.dropout_masks(batch, self.generator)
        return None if masks is None else tuple(m.to(self.device) for m in masks)

    def begin(self, group: WindowGroup) -> tuple[LSTMState | None, DropoutMasks | None]:
        """The state and masks the group's rows start from."""
        fresh = self._masks(len(group.episode))
        if group.lane is None:  # independent windows: h = 0, a mask per window
            return None, fresh
        lane = torch.from_numpy(group.lane).to(self.device)
        new = torch.from_numpy(group.start == 0)[:, None].to(self.device)
        h = self.h[lane].masked_fill(new, 0.0)
        c = self.c[lane].masked_fill(new, 0.0)
        masks = None
        if fresh is not None:
            masks = tuple(torch.where(new, f, kept[lane]) for f, kept in zip(fresh, self.masks,
                                                                            strict=True))
            for kept, m in zip(self.masks, masks, strict=True):
                kept[lane] = m
        return (h[None], c[None]), masks

    def end(self, group: WindowGroup, state: LSTMState) -> None:
        if group.lane is not None:
            lane = torch.from_numpy(group.lane).to(self.device)
            self.h[lane], self.c[lane] = state[0][0].detach(), state[1][0].detach()


def step_losses(model: MDNRNN, batch: SequenceBatch, pos_weight: Tensor,
                generator: torch.Generator, state: LSTMState | None = None,
                masks: DropoutMasks | None = None) -> tuple[dict[str, Tensor], LSTMState]:
    """Per-step losses (B, L): z_nll (nats, summed over dims), reward_mse (squared error),
    done_bce; and the LSTM's final state. The z noise is drawn on the CPU (`generator`) and
    copied to M's device, so a seed means the same draws everywhere."""
    device = model_device(model)
    mu, logvar, action, reward_target, done_target = (
        torch.from_numpy(a).to(device) for a in (batch.mu, batch.logvar, batch.action,
                                                 batch.reward, batch.done))
    noise = torch.randn(mu.shape, generator=generator).to(device)
    z = mu + torch.exp(0.5 * logvar) * noise
    mixture, reward, done_logit, final = model(z[:, :-1], action, state, masks)
    bce = F.binary_cross_entropy_with_logits(
        done_logit, done_target, pos_weight=pos_weight, reduction="none")
    return {"z_nll": mixture.nll(z[:, 1:]), "reward_mse": (reward - reward_target).square(),
            "done_bce": bce}, final


def batch_losses(model: MDNRNN, batch: SequenceBatch, pos_weight: Tensor,
                 generator: torch.Generator, state: LSTMState | None = None,
                 masks: DropoutMasks | None = None) -> tuple[dict[str, Tensor], LSTMState]:
    """Masked means over the batch (z_nll over steps with a z target, the others over steps
    inside the episode), the step counts, and the LSTM's final state."""
    per_step, final = step_losses(model, batch, pos_weight, generator, state, masks)
    mask = torch.from_numpy(batch.mask).float().to(model_device(model))
    z_mask = torch.from_numpy(batch.z_mask).float().to(mask.device)
    n, n_z = mask.sum(), z_mask.sum()
    return {"z_nll": (per_step["z_nll"] * z_mask).sum() / n_z.clamp_min(1),
            "reward_mse": (per_step["reward_mse"] * mask).sum() / n.clamp_min(1),
            "done_bce": (per_step["done_bce"] * mask).sum() / n.clamp_min(1),
            "steps": n, "z_steps": n_z}, final


def total_loss(losses: dict[str, Tensor], config: MDNRNNConfig) -> Tensor:
    return (losses["z_nll"] / config.z_size + config.reward_weight * losses["reward_mse"]
            + config.done_weight * losses["done_bce"])


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}_{hi}" if hi is not None else f"{lo}_end"


@torch.no_grad()
def evaluate(model: MDNRNN, sampler: SequenceSampler | None, config: MDNRNNConfig,
             pos_weight: Tensor) -> dict[str, float]:
    """Held-out losses over whole episodes from h = 0 (as the dream runs M), overall and per
    position bucket: valid_z_nll, valid_z_nll_0_100, ..."""
    keys = [f"valid_{k}" for k in LOSSES] + [f"valid_{k}_{bucket_name(*b)}" for b in
                                             POSITION_BUCKETS for k in LOSSES]
    if sampler is None:
        return dict.fromkeys(keys, float("nan"))
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    lanes = max(config.batch_size, 64)
    carried = CarriedState(model, lanes, torch.Generator())  # (its masks go unused)
    buckets = [("", 0, None), *((f"_{bucket_name(lo, hi)}", lo, hi) for lo, hi in
                                POSITION_BUCKETS)]
    sums = {(k, b[0]): 0.0 for k in LOSSES for b in buckets}
    counts = {(k, b[0]): 0.0 for k in LOSSES for b in buckets}
    for group in sampler.lanes(lanes, rng=None):
        batch = sampler.batch(group.episode, group.start)
        state, _ = carried.begin(group)
        per_step, final = step_losses(model, batch, pos_weight, generator, state)
        carried.end(group, final)
        position = torch.from_numpy(batch.position)
        per_step = {k: v.cpu() for k, v in per_step.items()}
        for suffix, lo, hi in buckets:
            where = position >= lo
            if hi is not None:
                where &= position < hi
            for k in LOSSES:
                valid = torch.from_numpy(batch.z_mask if k == "z_nll" else batch.mask) & where
                sums[k, suffix] += per_step[k][valid].sum().item()
                counts[k, suffix] += valid.sum().item()
    return {f"valid_{k}{suffix}": sums[k, suffix] / counts[k, suffix]
            if counts[k, suffix] else float("nan") for k in LOSSES for suffix, _, _ in buckets}


def train_mdnrnn(run: Path, config: MDNRNNConfig, resume: bool = False,
                 progress: bool = True, device: str = "cpu") -> None:
    """Train (or with `resume`, continue) M of `run` on RUN/latents (made by `encode`)."""
    check_fields(config, "config.json or a flag", "mdnrnn")
    paths = RunPaths(Path(run))
    paths.writable()
    paths.require(paths.vae, "train-vae")
    paths.require(paths.latents, "encode")
    files = list_latents(paths.latents)
    if not files:
        raise UserError(f"{paths.latents}: no encoded episodes; run `worldmodels encode` first")
    ckpt = paths.mdnrnn
    model, payload = checkpoint.resume_or_start(
        ckpt, resume, lambda p: checkpoint.load_model(p, MDNRNN, MDNRNNConfig))
    if model is not None:
        config = checkpoint.resumed_config(ckpt, model.config, config, FIXED_ON_RESUME,
                                           stage="train-mdnrnn")
    else:
        torch.manual_seed(config.seed)
        model = MDNRNN(config)

    train_files, valid_files = split_holdout(files, config.holdout_episodes)
    train_set = load_sampler(train_files, config.seq_len)
    valid_set = load_sampler(valid_files, config.seq_len)
    if train_set is None:
        raise UserError(f"{paths.latents}: none of the training episodes could be read")
    z_size = train_set.mu.shape[1]
    if z_size != config.z_size:
        raise UserError(f"{paths.latents}: latents have z size {z_size} but the M config "
                        f"says z_size {config.z_size}")
    if train_set.action.shape[1] != config.action_size:
        raise UserError(f"{paths.latents}: episodes have {train_set.action.shape[1]} actions "
                        f"but the M config says action_size {config.action_size} (data of "
                        "another game than the run's --env?)")
    if not payload:
        with torch.no_grad():
            model.done.bias.fill_(done_prior_logit(train_set))
    pos_weight = torch.tensor(payload.get("done_pos_weight", done_pos_weight(config, train_set)),
                              device=device)
    model.to(device)  # before the optimizer: its state lives where the weights do
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
            for group in optimizer.param_groups:
                group["lr"] = epoch_learning_rate(config, epoch)
            with rnn_threads(config):
                step, means, n_batches = _train_epoch(model, optimizer, train_set, config,
                                                      pos_weight, epoch, step, step_logger,
                                                      progress)
                seconds = time.perf_counter() - t0
                result = evaluate(model, valid_set, config, pos_weight)
            logger.log(step, epoch=epoch + 1, **means, **result,
                       learning_rate=optimizer.param_groups[0]["lr"],
                       steps_per_s=n_batches / seconds, epoch_seconds=seconds)
            checkpoint.save(ckpt, model, config, {
                "kind": "mdnrnn", "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                "step": step, "done_pos_weight": float(pos_weight),
            })
            if progress:
                tqdm.write(f"train-mdnrnn epoch {epoch + 1}: z NLL {means['z_nll']:.2f} "
                           f"nats/step (held-out {result['valid_z_nll']:.2f}; steps 300+ "
                           f"{result['valid_z_nll_300_end']:.2f}), reward MSE "
                           f"{means['reward_mse']:.3f}, done BCE {means['done_bce']:.3f}")
    finally:
        logger.close()
        step_logger.close()


def _train_epoch(model: MDNRNN, optimizer: torch.optim.Optimizer, train_set: SequenceSampler,
                 config: MDNRNNConfig, pos_weight: Tensor, epoch: int, step: int,
                 step_logger: RunLogger, progress: bool) -> tuple[int, dict[str, float], int]:
    """One pass over the training windows: (step, mean losses, batches)."""
    model.train()
    seed = config.seed * 100_003 + epoch  # windows, z samples and masks of this epoch
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    groups = train_set.plan(config.batch_size, rng, config.carry_state)
    carried = CarriedState(model, config.batch_size, generator)
    names = ("loss", "z_nll", "reward_mse", "done_bce")
    sums, n_batches = np.zeros(len(names)), 0
    bar = progress_bar(groups, desc=f"train-mdnrnn epoch {epoch + 1}/{config.epochs}",
                       unit="batch", disable=not progress, leave=False)
    for group in bar:
        state, masks = carried.begin(group)
        losses, final = batch_losses(model, train_set.batch(group.episode, group.start),
                                     pos_weight, generator, state, masks)
        carried.end(group, final)
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
    if args.dropout is not None:
        config.dropout = args.dropout
    if args.carry_state is not None:
        config.carry_state = args.carry_state
    if args.mixture is not None:
        config.mixture = args.mixture
    train_mdnrnn(args.run, config, resume=args.resume, device=str(resolve_device(args.device)))
    print(f"train-mdnrnn: M -> {paths.mdnrnn}")
    return 0
