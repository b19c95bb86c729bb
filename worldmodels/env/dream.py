"""The dream: M run as an environment. `BatchedDream` steps B dreams at once as tensors (the hot
path of evolution); `DreamEnv` is a `gymnasium.Env` over one of them.

One step, as M was trained: the controller sees (z_t, h_t) and acts a_t; M's LSTM takes
(z_t, a_t) to h_{t+1}; its heads give reward r_t, the done logit d_t and the mixture for
z_{t+1}, which is sampled with temperature tau (mixture logits / tau, sigma * sqrt(tau)).

Done is a threshold, not a coin: a dream ends when sigmoid(d_t) > 0.5. M's done head is
trained with a class-balancing weight (negatives / positives), so its probability is that
of a balanced problem; sampling it as a coin would end most dreams far too early.

Randomness: every dream row owns a `torch.Generator` seeded with that row's seed. At reset
it draws the start (which real episode start, then the z noise); then, every CHUNK steps, a
block of uniforms (mixture choice) and normals (z noise). So a row's dream depends only on
its seed and its actions, never on which other rows share the batch: a batched dream and a
single `DreamEnv` agree for the same seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from worldmodels.models.controller import ACTIONS, squash
from worldmodels.models.mdnrnn import MDNRNN, dropout_mask
from worldmodels.models.vae import ConvVAE

CHUNK = 32  # steps of noise drawn per row at a time
ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)


def check_tau(tau: float) -> float:
    from worldmodels.errors import UserError

    if not (tau > 0 and math.isfinite(tau)):
        raise UserError(f"--tau must be finite and > 0, got {tau}")
    return float(tau)


class BatchedDream:
    """B dreams of one M, stepped together with no autograd and no per-row work per step.

    `starts` are V's (mu, logvar) of real episodes' first frames, each (N, Z)."""

    def __init__(self, mdnrnn: MDNRNN, starts: tuple[Tensor, Tensor], tau: float = 1.15,
                 max_steps: int = 1000):
        c = mdnrnn.config
        self.z_size, self.hidden, self.k = c.z_size, c.hidden_size, c.gaussians
        self.tau, self.max_steps = check_tau(tau), max_steps
        self.start_mu = starts[0].float().contiguous()
        self.start_std = torch.exp(0.5 * starts[1].float()).contiguous()
        z = self.z_size
        with torch.no_grad():
            lstm = mdnrnn.lstm
            w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
            # One matmul for the LSTM over x = [z, h, a] (so [z, h] is a view for C).
            self.w_lstm = torch.cat([w_ih[:, :z], w_hh, w_ih[:, z:]], 1).T.contiguous()
            self.b_lstm = (lstm.bias_ih_l0 + lstm.bias_hh_l0).contiguous()
            # tanh(x) = 2 sigmoid(2x) - 1, and sigmoid is ~4x faster than tanh on CPU: the
            # cell-input gate's weights are doubled so one sigmoid serves all four gates.
            h4 = slice(2 * c.hidden_size, 3 * c.hidden_size)
            self.w_lstm[:, h4] *= 2.0
            self.b_lstm[h4] *= 2.0
            # One matmul for all heads: mixture (3 * Z * K), reward, done.
            heads = [mdnrnn.mdn.linear, mdnrnn.reward, mdnrnn.done]
            w_heads = torch.cat([m.weight for m in heads]).T
            self.head_width = w_heads.shape[1]
            b_heads = torch.cat([m.bias for m in heads])
            pad = -w_heads.shape[1] % 16  # matmuls run faster on widths that are multiples of 16
            self.w_heads = torch.nn.functional.pad(w_heads, (0, pad)).contiguous()
            self.b_heads = torch.nn.functional.pad(b_heads, (0, pad)).contiguous()
        self.n_mix = z * self.k
        self.mixture_head = mdnrnn.mdn
        self.dropout = c.dropout
        self.batch = 0

    # ------------------------------------------------------------------ state
    def _allocate(self, batch: int) -> None:
        if batch == self.batch:
            return
        z, h = self.z_size, self.hidden
        self.batch = batch
        self.x = torch.zeros(batch, z + h + ACTIONS)  # [z, h, a]: M's input and C's input
        self.c = torch.zeros(batch, h)
        self.gates = torch.empty(batch, 4 * h)
        self.head_out = torch.empty(batch, self.w_heads.shape[1])
        self.uniform = torch.empty(batch, CHUNK, z)
        self.normal = torch.empty(batch, CHUNK, z)
        self.x_masked = torch.empty_like(self.x)

    @property
    def z(self) -> Tensor:
        return self.x[:, : self.z_size]

    @property
    def h(self) -> Tensor:
        return self.x[:, self.z_size : self.z_size + self.hidden]

    @property
    def obs(self) -> Tensor:
        """(B, Z + H): [z, h], what C sees."""
        return self.x[:, : self.z_size + self.hidden]

    @torch.inference_mode()
    def reset(self, seeds: list[int] | np.ndarray) -> Tensor:
        """Start one dream per seed from a real episode start; returns obs (B, Z + H)."""
        seeds = [int(s) for s in seeds]
        self._allocate(len(seeds))
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        n_starts = len(self.start_mu)
        index = torch.empty(self.batch, dtype=torch.long)
        eps = torch.empty(self.batch, self.z_size)
        for i, g in enumerate(self.generators):  # per row once per dream, not per step
            index[i] = torch.randint(n_starts, (1,), generator=g)[0]
            torch.randn(self.z_size, generator=g, out=eps[i])
        self.mask = None
        if self.dropout > 0:  # one mask per dream for [z, h, a], from the row's generator
            self.mask = torch.stack([dropout_mask(self.x.shape[1:], self.dropout, g)
                                     for g in self.generators])
        self.x.zero_()
        self.c.zero_()
        self.z.copy_(self.start_mu[index] + self.start_std[index] * eps)
        self.t = 0
        return self.obs

    def _draw_noise(self) -> None:
        for i, g in enumerate(self.generators):
            torch.rand(CHUNK, self.z_size, generator=g, out=self.uniform[i])
            torch.randn(CHUNK, self.z_size, generator=g, out=self.normal[i])

    @torch.inference_mode()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """Advance every dream by one step with actions (B, 3); returns (reward (B,), done (B,)
        bool); the new obs is `self.obs`."""
        z_size, hidden = self.z_size, self.hidden
        if self.t % CHUNK == 0:
            self._draw_noise()
        slot = self.t % CHUNK
        self.x[:, z_size + hidden :].copy_(action)
        # LSTM step, in place; with dropout, each row's mask multiplies [z, h, a] (C still
        # sees the unmasked [z, h]).
        x = self.x if self.mask is None else torch.mul(self.x, self.mask, out=self.x_masked)
        gates = torch.addmm(self.b_lstm, x, self.w_lstm, out=self.gates).sigmoid_()
        i, f, g, o = gates.chunk(4, 1)
        g.mul_(2.0).sub_(1.0)  # = tanh of the undoubled pre-activation
        self.c.mul_(f).addcmul_(i, g)
        h = self.h
        torch.sigmoid(self.c * 2.0, out=h)  # h = o * tanh(c), via sigmoid again
        h.mul_(2.0).sub_(1.0).mul_(o)
        # Heads, then z_{t+1} from the MDN core's own sampler with this step's noise.
        out = torch.addmm(self.b_heads, h, self.w_heads, out=self.head_out)
        n = self.n_mix
        reward, done = out[:, 3 * n].clone(), out[:, 3 * n + 1] > 0
        mixture = self.mixture_head.params_from(out[:, : 3 * n])
        self.z.copy_(mixture.sample_with(self.uniform[:, slot], self.normal[:, slot], self.tau))
        self.t += 1
        return reward, done

    @torch.inference_mode()
    def rollout(self, params: Tensor | np.ndarray, seeds: list[int] | np.ndarray) -> np.ndarray:
        """Each row driven by its own controller params (B, P): total dream reward per row.

        A row stops adding reward after its first done; all stop at `max_steps`."""
        params = torch.from_numpy(np.array(params, np.float32))  # a writable copy
        self.reset(seeds)
        n_in = self.z_size + self.hidden
        weight = params[:, : n_in * ACTIONS].reshape(-1, ACTIONS, n_in)
        bias = params[:, n_in * ACTIONS :]
        total = torch.zeros(self.batch)
        alive = torch.ones(self.batch, dtype=torch.bool)
        for _ in range(self.max_steps):
            # Each row its own C: a row-wise dot product (5x faster than a batched matmul of
            # 3 x 288 matrices on CPU).
            raw = torch.linalg.vecdot(weight, self.obs.unsqueeze(1)).add_(bias)
            reward, done = self.step(squash(raw))
            total.add_(reward.masked_fill_(~alive, 0.0))
            alive &= ~done
            if not alive.any():
                break
        return total.numpy().astype(np.float64)

    @torch.inference_mode()
    def flops_per_step(self) -> int:
        """Multiply-adds x 2 of one row's step (matmuls only: LSTM, heads, controller)."""
        n_in = self.z_size + self.hidden
        return 2 * (self.w_lstm.numel() + self.hidden * self.head_width + n_in * ACTIONS)


def load_starts(latents_dir: Path, limit: int = 1000) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of the first frame of up to `limit` encoded episodes, each (N, Z)."""
    from worldmodels.data.latents import list_latents, read_latents
    from worldmodels.errors import UserError

    files = list_latents(latents_dir)[:limit]
    if not files:
        raise UserError(f"{latents_dir}: no encoded episodes; run `worldmodels encode` first")
    firsts = [read_latents(f) for f in files]
    mu = torch.from_numpy(np.stack([e.mu[0] for e in firsts]).astype(np.float32))
    logvar = torch.from_numpy(np.stack([e.logvar[0] for e in firsts]).astype(np.float32))
    return mu, logvar


class DreamEnv(gym.Env):
    """One dream as a gymnasium env: obs [z, h] (float32, Z + H), CarRacing's action Box,
    reward and termination from M's heads, truncation at `max_steps`; `render()` decodes z
    through V's decoder (rgb_array, 64x64)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, mdnrnn: MDNRNN, starts: tuple[Tensor, Tensor], vae: ConvVAE | None = None,
                 tau: float = 1.15, max_steps: int = 1000, render_mode: str | None = None):
        self.dream = BatchedDream(mdnrnn, starts, tau=tau, max_steps=max_steps)
        self.vae, self.max_steps, self.render_mode = vae, max_steps, render_mode
        size = mdnrnn.config.z_size + mdnrnn.config.hidden_size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = gym.spaces.Box(ACTION_LOW, ACTION_HIGH)
        self._stepped = 0

    @classmethod
    def from_run(cls, run: Path, tau: float = 1.15, max_steps: int = 1000,
                 render_mode: str | None = None) -> DreamEnv:
        from worldmodels.evolve.workers import ModelBundle

        bundle = ModelBundle.from_run(Path(run), with_vae=render_mode is not None)
        return cls(bundle.mdnrnn(), bundle.starts(), bundle.vae(), tau, max_steps, render_mode)

    def _obs(self) -> np.ndarray:
        return self.dream.obs[0].numpy().astype(np.float32, copy=True)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # With a seed, the dream's row seed is that seed (so it matches a BatchedDream row);
        # without one, the next seed comes from the env's own seeded generator.
        row_seed = seed if seed is not None else int(self.np_random.integers(2**62))
        self.dream.reset([row_seed])
        self._stepped = 0
        return self._obs(), {"seed": row_seed}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), ACTION_LOW, ACTION_HIGH)
        reward, done = self.dream.step(torch.from_numpy(action).view(1, ACTIONS))
        self._stepped += 1
        truncated = self._stepped >= self.max_steps
        return self._obs(), float(reward[0]), bool(done[0]), truncated, {}

    def render(self):
        if self.vae is None:
            raise RuntimeError("DreamEnv.render needs V: pass vae= (or from_run with render_mode)")
        with torch.inference_mode():
            frame = self.vae.decode(self.dream.z.clone())[0]
        return (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
