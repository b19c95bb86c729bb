"""The dream: M run as an environment. `BatchedDream` steps B dreams at once as tensors (the hot
path of evolution); `DreamEnv` is a `gymnasium.Env` over one of them.

One step, as M was trained: the controller sees (z_t, h_t) and acts a_t; M's LSTM takes
(z_t, a_t) to h_{t+1}; its heads give reward r_t, the done logit d_t and the mixture for
z_{t+1}, which is sampled with temperature tau (mixture logits / tau, sigma * sqrt(tau)).

Done has three rules (`done`). M's done head is trained with a class-balancing weight w
(negatives / positives), so sigmoid(d_t) is the probability of a balanced problem:
- `threshold` (CarRacing): a dream ends when sigmoid(d_t) > 0.5, that is where the done odds
  pass 1/w, as if the event were certain from there on;
- `likely`: a dream ends when the head's calibrated probability, sigmoid(d_t - log w) (the
  weight undone), passes 0.5: where M holds the end more likely than not;
- `sample`: a dream ends by a coin of the calibrated probability.

Randomness: every dream row owns a CPU `torch.Generator` seeded with that row's seed. At
reset it draws the start (which real episode start, then the z noise); then, every CHUNK
steps, a block of uniforms (mixture choice) and normals (z noise), and with `sample` the
done coins' uniforms, copied to the dream's device. So a row's dream depends only on its
seed and its actions, never on which other rows share the batch or where it runs: a batched
dream and a `DreamEnv` agree for a seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from worldmodels.agent import WorldModel
from worldmodels.config import DONE_RULES
from worldmodels.env.carracing import CARRACING
from worldmodels.env.game import ActionSpace
from worldmodels.models.controller import Controllers
from worldmodels.models.mdn import check_tau
from worldmodels.models.mdnrnn import MDNRNN, dropout_mask
from worldmodels.models.vae import ConvVAE
from worldmodels.run import RunPaths, load_run_config

CHUNK = 32  # steps of noise drawn per row at a time


def check_done_rule(done: str) -> str:
    if done not in DONE_RULES:
        raise ValueError(f"the dream's done rule must be one of {DONE_RULES}, got {done!r}")
    return done


class BatchedDream:
    """B dreams of one M, stepped together with no autograd and no per-row work per step
    (in `rollout`, dreams that ended leave the batch once half of them have).

    `starts` are V's (mu, logvar) of real episodes' first frames, each (N, Z); `actions`
    is the game's (how C's outputs become actions); `done` is the done rule and
    `done_pos_weight` the class weight M's done head trained with (module docstring). The
    state lives on `device`; the noise is drawn on the CPU (per-row generators) and copied."""

    def __init__(self, mdnrnn: MDNRNN, starts: tuple[Tensor, Tensor], tau: float = 1.15,
                 max_steps: int = 1000, device: torch.device | str = "cpu",
                 actions: ActionSpace = CARRACING.actions, done: str = "threshold",
                 done_pos_weight: float = 1.0):
        self.device = torch.device(device)
        mdnrnn = mdnrnn.to(self.device)
        c = mdnrnn.config
        if c.action_size != actions.size:
            raise ValueError(f"M takes {c.action_size} actions, the game has {actions.size}")
        self.actions = actions
        self.z_size, self.hidden = c.z_size, c.hidden_size
        self.tau, self.max_steps = check_tau(tau), max_steps
        self.sample_done = check_done_rule(done) == "sample"
        self.done_shift = math.log(done_pos_weight)  # the head's logit minus this: calibrated
        # The logit above which `threshold` and `likely` end a dream.
        self.done_cut = self.done_shift if done == "likely" else 0.0
        self.start_mu = starts[0].float().cpu().contiguous()
        self.start_std = torch.exp(0.5 * starts[1].float().cpu()).contiguous()
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
            # One matmul for all heads: mixture, reward, done.
            heads = [mdnrnn.mdn.linear, mdnrnn.reward, mdnrnn.done]
            w_heads = torch.cat([m.weight for m in heads]).T
            self.head_width = w_heads.shape[1]
            b_heads = torch.cat([m.bias for m in heads])
            pad = -w_heads.shape[1] % 16  # matmuls run faster on widths that are multiples of 16
            self.w_heads = torch.nn.functional.pad(w_heads, (0, pad)).contiguous()
            self.b_heads = torch.nn.functional.pad(b_heads, (0, pad)).contiguous()
        self.mixture_head = mdnrnn.mdn
        self.mix_width = mdnrnn.mdn.width  # the head's outputs; reward and done come after
        self.dropout = c.dropout
        self.batch = 0

    # ------------------------------------------------------------------ state
    def _allocate(self, batch: int) -> None:
        if batch == self.batch:
            return
        z, h = self.z_size, self.hidden
        self.batch = batch
        on = {"device": self.device}
        self.x = torch.zeros(batch, z + h + self.actions.size, **on)  # [z, h, a]: M's and C's input
        self.c = torch.zeros(batch, h, **on)
        self._allocate_scratch()
        # Drawn on the CPU by the rows' generators; on another device, copied once a chunk.
        self.cpu_noise = torch.empty(2, batch, CHUNK, z)
        self.cpu_coins = torch.empty(batch, CHUNK)  # used by the `sample` done rule only
        on_cpu = self.device.type == "cpu"
        self.noise = self.cpu_noise if on_cpu else torch.empty(2, batch, CHUNK, z, **on)
        self.coins = self.cpu_coins if on_cpu else torch.empty(batch, CHUNK, **on)
        self.uniform, self.normal = self.noise.unbind(0)

    def _allocate_scratch(self) -> None:
        """The step's work buffers, one row per dream of the batch (`self.x`)."""
        self.gates = torch.empty(len(self.x), 4 * self.hidden, device=self.device)
        self.head_out = torch.empty(len(self.x), self.w_heads.shape[1], device=self.device)
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
                                     for g in self.generators]).to(self.device)
        self.x.zero_()
        self.c.zero_()
        self.z.copy_(self.start_mu[index] + self.start_std[index] * eps)
        self.t = 0
        return self.obs

    def _draw_noise(self) -> None:
        uniform, normal = self.cpu_noise.unbind(0)
        for i, g in enumerate(self.generators):
            torch.rand(CHUNK, self.z_size, generator=g, out=uniform[i])
            torch.randn(CHUNK, self.z_size, generator=g, out=normal[i])
            if self.sample_done:  # drawn last, so the threshold rule's dreams stay as they were
                torch.rand(CHUNK, generator=g, out=self.cpu_coins[i])
        if self.noise is not self.cpu_noise:
            self.noise.copy_(self.cpu_noise, non_blocking=True)
            self.coins.copy_(self.cpu_coins, non_blocking=True)

    @torch.inference_mode()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """Advance every dream by one step with actions (B, A); returns (reward (B,), done (B,)
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
        torch.mul(self.c, 2.0, out=h).sigmoid_()  # h = o * tanh(c), via sigmoid again
        h.mul_(2.0).sub_(1.0).mul_(o)
        # Heads, then z_{t+1} from the MDN core's own sampler with this step's noise.
        out = torch.addmm(self.b_heads, h, self.w_heads, out=self.head_out)
        w = self.mix_width
        reward, done_logit = out[:, w].clone(), out[:, w + 1]
        if self.sample_done:
            done = self.coins[:, slot] < torch.sigmoid(done_logit - self.done_shift)
        else:
            done = done_logit > self.done_cut
        mixture = self.mixture_head.params_from(out[:, :w])
        self.z.copy_(mixture.sample_with(self.uniform[:, slot], self.normal[:, slot], self.tau))
        self.t += 1
        return reward, done

    @torch.inference_mode()
    def drive(self, controllers: Controllers) -> tuple[Tensor, Tensor]:
        """One step with row i driven by controller i: C acts on [z, h] (and c), then `step`."""
        return self.step(controllers.act(self.obs, cell=self.c))

    @torch.inference_mode()
    def rollout(self, params: Tensor | np.ndarray, seeds: list[int] | np.ndarray,
                with_steps: bool = False, sees_cell: bool = False
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Each row driven by its own controller params (B, P) (that `sees_cell` or not):
        total dream reward per row (and, `with_steps`, the steps it ran). A row stops adding
        reward after its first done; all stop at `max_steps`."""
        controllers = Controllers(params, self.z_size, self.hidden, self.device, self.actions,
                                  sees_cell)
        self.reset(seeds)
        n = self.batch
        final_total = torch.zeros(n, device=self.device)
        final_steps = torch.zeros(n, dtype=torch.long, device=self.device)
        rows = torch.arange(n, device=self.device)  # the dream each current row is
        total, steps = final_total.clone(), final_steps.clone()
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        for _ in range(self.max_steps):
            reward, done = self.drive(controllers)
            total.add_(reward.masked_fill_(~alive, 0.0))
            steps.add_(alive)
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            # Dreams that end early (Take Cover's deaths) would keep costing a full row each
            # step: once half the rows are done, step only the live ones.
            if n_alive <= len(alive) // 2:
                final_total[rows], final_steps[rows] = total, steps
                live = alive.nonzero().squeeze(1)
                self.keep_rows(live)
                if len(controllers) > 1:
                    controllers = controllers.subset(live)
                rows, total, steps, alive = rows[live], total[live], steps[live], alive[live]
        final_total[rows], final_steps[rows] = total, steps
        total_np = final_total.cpu().numpy().astype(np.float64)
        return (total_np, final_steps.cpu().numpy()) if with_steps else total_np

    @torch.inference_mode()
    def keep_rows(self, rows: Tensor) -> None:
        """Drop every dream but `rows` (indices into the batch) from the batch; the kept ones
        go on exactly as they would have (their state, noise and generators move with them)."""
        on_cpu = rows.cpu()
        self.x, self.c = self.x[rows], self.c[rows]
        if self.mask is not None:
            self.mask = self.mask[rows]
        self.generators = [self.generators[i] for i in on_cpu.tolist()]
        self.cpu_noise, self.cpu_coins = self.cpu_noise[:, on_cpu], self.cpu_coins[on_cpu]
        if self.device.type == "cpu":
            self.noise, self.coins = self.cpu_noise, self.cpu_coins
        else:
            self.noise, self.coins = self.noise[:, rows], self.coins[rows]
        self.uniform, self.normal = self.noise.unbind(0)
        self.batch = len(rows)
        self._allocate_scratch()

    @torch.inference_mode()
    def flops_per_step(self) -> int:
        """Multiply-adds x 2 of one row's step (matmuls only: LSTM, heads, controller)."""
        n_in = self.z_size + self.hidden
        return 2 * (self.w_lstm.numel() + self.hidden * self.head_width
                    + n_in * self.actions.size)


class DreamEnv(gym.Env):
    """One dream as a gymnasium env: obs [z, h] (float32, Z + H), the game's action Box,
    reward and termination from M's heads, truncation at `max_steps`; `render()` decodes z
    through V's decoder (rgb_array, 64x64)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, mdnrnn: MDNRNN, starts: tuple[Tensor, Tensor], vae: ConvVAE | None = None,
                 tau: float = 1.15, max_steps: int = 1000, render_mode: str | None = None,
                 device: torch.device | str = "cpu", actions: ActionSpace = CARRACING.actions,
                 done: str = "threshold", done_pos_weight: float = 1.0):
        self.dream = BatchedDream(mdnrnn, starts, tau, max_steps, device, actions, done,
                                  done_pos_weight)
        self.vae, self.max_steps, self.render_mode = vae, max_steps, render_mode
        size = mdnrnn.config.z_size + mdnrnn.config.hidden_size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = actions.box()
        self.actions = actions
        self._stepped = 0

    @classmethod
    def from_run(cls, run: Path, tau: float = 1.15, max_steps: int = 1000,
                 render_mode: str | None = None, device: torch.device | str = "cpu",
                 done: str | None = None) -> DreamEnv:
        """The run's dream; `done` defaults to the run's own rule (evolve.done)."""
        world = WorldModel.from_run(Path(run), with_vae=render_mode is not None)
        paths = RunPaths(Path(run))
        if done is None:
            done = load_run_config(paths).evolve.done if paths.config.exists() else "threshold"
        vae = world.vae(device) if render_mode is not None else None
        return cls(world.mdnrnn(device), world.starts(), vae, tau, max_steps, render_mode,
                   device, world.game.actions, done, world.done_pos_weight)

    def _obs(self) -> np.ndarray:
        return self.dream.obs[0].cpu().numpy().astype(np.float32, copy=True)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # With a seed, the dream's row seed is that seed (so it matches a BatchedDream row);
        # without one, the next seed comes from the env's own seeded generator.
        row_seed = seed if seed is not None else int(self.np_random.integers(2**62))
        self.dream.reset([row_seed])
        self._stepped = 0
        return self._obs(), {"seed": row_seed}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), self.actions.low, self.actions.high)
        reward, done = self.dream.step(torch.from_numpy(action).view(1, self.actions.size).to(
            self.dream.device))
        self._stepped += 1
        truncated = self._stepped >= self.max_steps
        return self._obs(), float(reward[0]), bool(done[0]), truncated, {}

    def render(self):
        if self.vae is None:
            raise RuntimeError("DreamEnv.render needs V: pass vae= (or from_run with render_mode)")
        with torch.inference_mode():
            frame = self.vae.decode(self.dream.z.clone())[0]
        return (frame.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
