"""The agent of a run, written once: its world model (V, M, the dream starts, the device) and
its step on real frames, used by evaluation, the evolve workers, the videos and the dream.

One step on a batch of real frames: V encodes them to (mu, logvar), z is sampled from them,
C acts on [z, h], and M updates h with (z, action). `run_episodes` steps several envs at
once and runs V, M and C on all their frames together; an episode that ends leaves the
batch and the next one takes its env. Episode i owns its noise: a torch generator and a
numpy generator seeded with its seed, so its result does not depend on its batch mates.

Dream starts: V's (mu, logvar) of the first frame of up to 1,000 encoded episodes, written
once by `encode` as RUN/dream_starts.npz; a run encoded before that file existed gets it
built from RUN/latents on first load.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from worldmodels import atomic, checkpoint
from worldmodels.config import MDNRNNConfig, VAEConfig, from_dict
from worldmodels.data.latents import list_latents, read_latents
from worldmodels.data.policies import RandomPolicy
from worldmodels.data.rollouts import Episode
from worldmodels.env.carracing import CARRACING
from worldmodels.env.game import ActionSpace, Game
from worldmodels.env.games import get_game
from worldmodels.errors import UserError, require_finite
from worldmodels.models.controller import Controllers, param_count
from worldmodels.models.mdnrnn import MDNRNN, LSTMState
from worldmodels.models.vae import ConvVAE
from worldmodels.npfiles import read_npy
from worldmodels.run import RunPaths, load_run_config

MAX_STARTS = 1000  # dream starts kept: first frames of this many encoded episodes


# ---------------------------------------------------------------------------- dream starts
def starts_from_latents(latents_dir: Path, limit: int = MAX_STARTS) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of the first frame of up to `limit` encoded episodes, each (N, Z)."""
    files = list_latents(latents_dir)[:limit]
    if not files:
        raise UserError(f"{latents_dir}: no encoded episodes; run `worldmodels encode` first")
    return stack_starts([read_latents(f) for f in files])


def stack_starts(episodes: Sequence) -> tuple[Tensor, Tensor]:
    """First-frame (mu, logvar) of latents episodes as float32 tensors, each (N, Z)."""
    mu = np.stack([e.mu[0] for e in episodes]).astype(np.float32)
    logvar = np.stack([e.logvar[0] for e in episodes]).astype(np.float32)
    return torch.from_numpy(mu), torch.from_numpy(logvar)


def save_starts(path: Path, starts: tuple[Tensor, Tensor]) -> None:
    with atomic.replacing(Path(path)) as tmp, tmp.open("wb") as f:
        np.savez(f, mu=starts[0].numpy(), logvar=starts[1].numpy())


def load_starts(paths: RunPaths) -> tuple[Tensor, Tensor]:
    """RUN/dream_starts.npz; built from RUN/latents (and saved) for a run that predates it."""
    if not paths.dream_starts.exists():
        starts = starts_from_latents(paths.latents)
        save_starts(paths.dream_starts, starts)
        return starts
    try:
        with np.load(paths.dream_starts, allow_pickle=False) as data:
            return torch.from_numpy(data["mu"]), torch.from_numpy(data["logvar"])
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{paths.dream_starts}: unreadable ({type(err).__name__}); "
                        "re-run `worldmodels encode`") from None


def load_controller(paths: RunPaths, iteration: int | None = None) -> np.ndarray:
    """C's parameters (RUN/controller.npy, written by evolve; or snapshot `iteration`'s),
    float32."""
    path = paths.agent_file(paths.controller.name, iteration)
    paths.require(path, "evolve" if iteration is None else "iterate")
    params = read_npy(path)
    if not np.issubdtype(params.dtype, np.floating) or not np.isfinite(params).all():
        raise UserError(f"{path}: expected finite floats, got {params.dtype} values that are "
                        "not")
    return params.astype(np.float32)


# ---------------------------------------------------------------------------- world model
@dataclass
class WorldModel:
    """V, M and the dream starts of a run, and the name of its game, as plain picklable CPU
    data (shipped to Ray actors once); `vae(device)` and `mdnrnn(device)` build the networks
    where they will run."""

    mdnrnn_config: dict
    mdnrnn_state: dict
    vae_config: dict | None
    vae_state: dict | None
    start_mu: Tensor  # (N, Z): V's posterior of real episodes' first frames
    start_logvar: Tensor
    env: str = CARRACING.name  # the game (`--env`) the run learns
    done_pos_weight: float = 1.0  # the class weight M's done head trained with (the dream's
    # `sample` done rule undoes it)
    sees_cell: bool = False  # C reads M's cell state too (evolve.sees_cell)
    real_z: str = "sample"  # z from a real frame: V's posterior sampled, or its mean

    @classmethod
    def from_run(cls, run: Path, with_vae: bool = True,
                 iteration: int | None = None) -> WorldModel:
        """RUN's world model, with the M of snapshot `iteration` (made by iterate) if given."""
        paths = RunPaths(Path(run))
        paths.require(paths.vae, "train-vae")
        m_path = paths.agent_file(paths.mdnrnn.name, iteration)
        paths.require(m_path, "train-mdnrnn" if iteration is None else "iterate")
        mdnrnn, payload = checkpoint.load_model(m_path, MDNRNN, MDNRNNConfig)
        config = load_run_config(paths) if paths.config.exists() else None
        game = get_game(config.env if config else CARRACING.name)
        if mdnrnn.config.action_size != game.actions.size:
            raise UserError(f"{m_path}: M was trained on {mdnrnn.config.action_size} "
                            f"actions but the run's --env {game.name} has {game.actions.size}; "
                            "a run holds one game")
        vae_config = vae_state = None
        if with_vae:
            vae, _ = checkpoint.load_model(paths.vae, ConvVAE, VAEConfig)
            if vae.config.z_size != mdnrnn.config.z_size:  # else a matmul error mid-run
                raise UserError(f"{paths.vae}: V has z size {vae.config.z_size} but "
                                f"{m_path.name} was trained on z size "
                                f"{mdnrnn.config.z_size}; retrain M (train-mdnrnn) after V")
            vae_config, vae_state = asdict(vae.config), vae.state_dict()
        mu, logvar = load_starts(paths)
        if mu.shape[1] != mdnrnn.config.z_size:
            raise UserError(f"{paths.dream_starts}: z size {mu.shape[1]} but M has "
                            f"{mdnrnn.config.z_size}")
        pos_weight = payload.get("done_pos_weight", 1.0)
        require_finite(f"{m_path}: done_pos_weight", pos_weight, above=0)
        return cls(asdict(mdnrnn.config), mdnrnn.state_dict(), vae_config, vae_state, mu, logvar,
                   game.name, float(pos_weight), bool(config and config.evolve.sees_cell),
                   config.evolve.real_z if config else "sample")

    def mdnrnn(self, device: torch.device | str = "cpu") -> MDNRNN:
        model = MDNRNN(from_dict(MDNRNNConfig, self.mdnrnn_config))
        model.load_state_dict(self.mdnrnn_state)
        return model.eval().to(device)

    def vae(self, device: torch.device | str = "cpu") -> ConvVAE:
        if self.vae_state is None:
            raise ValueError("this world model was loaded without V (with_vae=False)")
        model = ConvVAE(from_dict(VAEConfig, self.vae_config))
        model.load_state_dict(self.vae_state)
        return model.eval().to(device)

    def starts(self) -> tuple[Tensor, Tensor]:
        return self.start_mu, self.start_logvar

    @property
    def z_size(self) -> int:
        return int(self.mdnrnn_config["z_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.mdnrnn_config["hidden_size"])

    @property
    def game(self) -> Game:
        return get_game(self.env)

    @property
    def param_count(self) -> int:
        return param_count(self.z_size, self.hidden_size, self.game.actions.size, self.sees_cell)

    def load_controller(self, paths: RunPaths, iteration: int | None = None) -> np.ndarray:
        """RUN/controller.npy (or snapshot `iteration`'s), refused in one line unless it is a
        C of this world model."""
        params = load_controller(paths, iteration)
        if params.shape != (self.param_count,):
            raise UserError(f"{paths.agent_file(paths.controller.name, iteration)}: "
                            f"{params.shape} parameters, the run's C needs "
                            f"({self.param_count},)")
        return params

    def controllers(self, params: np.ndarray, device: torch.device | str = "cpu") -> Controllers:
        return Controllers(params, self.z_size, self.hidden_size, device, self.game.actions,
                           self.sees_cell)


@contextlib.contextmanager
def one_thread(device: torch.device):
    """Small CPU batches are fastest on one thread; more only contend (badly on a busy box)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the agent
class Agent:
    """V and M on one device: the agent's batched step on real frames."""

    def __init__(self, vae: ConvVAE, mdnrnn: MDNRNN, device: torch.device | str = "cpu",
                 actions: ActionSpace = CARRACING.actions, real_z: str = "sample"):
        self.device = torch.device(device)
        self.actions = actions
        self.z_mean = real_z == "mean"
        # Frames arrive as (B, H, W, C): channels-last conv weights skip a layout reorder per
        # batch (~20% of V's time on CPU).
        self.vae = vae.to(self.device, memory_format=torch.channels_last).eval()
        self.mdnrnn = mdnrnn.to(self.device).eval()
        self.z_size, self.hidden_size = mdnrnn.config.z_size, mdnrnn.config.hidden_size

    @classmethod
    def from_world(cls, world: WorldModel, device: torch.device | str = "cpu") -> Agent:
        return cls(world.vae(device), world.mdnrnn(device), device, world.game.actions,
                   world.real_z)

    def initial_state(self, batch: int) -> LSTMState:
        return self.mdnrnn.initial_state(batch, self.device)

    @torch.inference_mode()
    def step(self, frames: np.ndarray, z_noise: Tensor | None, controllers: Controllers,
             rows: Tensor, state: LSTMState,
             action_noise: Tensor | None = None) -> tuple[Tensor, LSTMState]:
        """Frames (B, 64, 64, 3) uint8 and standard normals (B, Z) -> C's actions (B, A),
        plus `action_noise` (B, A) clipped to the bounds, and M's next state. Frame i is
        driven by controller rows[i]. z is V's posterior sampled with `z_noise`, or its mean
        where there is none (`real_z` mean)."""
        mu, logvar = self.vae.encode(torch.from_numpy(frames).to(self.device))
        z = mu if z_noise is None else mu + torch.exp(0.5 * logvar) * z_noise.to(self.device)
        action = controllers.act(torch.cat([z, state[0]], 1), rows, cell=state[1])
        if action_noise is not None:
            low, high = (torch.from_numpy(b).to(self.device)
                         for b in (self.actions.low, self.actions.high))
            action = torch.clamp(action + action_noise.to(self.device), low, high)
        return action, self.mdnrnn.step(z, action, state)

    @torch.inference_mode()
    def reconstruct(self, frames: np.ndarray, batch: int = 256) -> np.ndarray:
        """V's reconstructions (from mu) of uint8 frames (T, 64, 64, 3), as uint8."""
        out = []
        for i in range(0, len(frames), batch):
            mu, _ = self.vae.encode(torch.from_numpy(frames[i:i + batch]).to(self.device))
            out.append(decode_frames(self.vae, mu))
        return np.concatenate(out)


@torch.inference_mode()
def decode_frames(vae: ConvVAE, z: Tensor) -> np.ndarray:
    """z (T, Z) through V's decoder -> uint8 frames (T, 64, 64, 3)."""
    frames = vae.decode(z).permute(0, 2, 3, 1).mul(255).round_().to(torch.uint8)
    return frames.cpu().numpy()


# ---------------------------------------------------------------------------- real episodes
@dataclass
class EpisodeResult:
    seed: int
    total_reward: float
    steps: int
    episode: Episode | None = None  # frames, actions, rewards, dones, when recorded


@dataclass
class _Running:
    """One episode in an env slot."""

    index: int
    seed: int
    obs: np.ndarray
    z_rng: torch.Generator
    rng: np.random.Generator  # random actions, or the exploration noise
    policy: RandomPolicy | None
    total: float = 0.0
    steps: int = 0
    record: dict[str, list] | None = field(default=None)


def run_episodes(envs: Sequence[gym.Env], seeds: Sequence[int], max_steps: int,
                 agent: Agent | None = None, controllers: Controllers | None = None,
                 rows: Sequence[int] | None = None, action_noise: float = 0.0,
                 record: bool = False, actions: ActionSpace | None = None
                 ) -> list[EpisodeResult]:
    """Episode i (seed seeds[i]) driven by controller rows[i] (default i, or the only one)
    through `agent`, or with uniform random actions when `controllers` is None (V and M are
    not run; `actions`, default the agent's or CarRacing's, bounds them). The envs (from the
    game's make_env) are stepped together, one episode each at a time.

    `action_noise` > 0 adds N(0, action_noise) to C's actions (clipped to the bounds): the
    exploration of iterative training. `record` keeps each episode's frames, actions,
    rewards and dones (done marks termination only, as in collected episodes)."""
    if controllers is not None and agent is None:
        raise ValueError("a controller needs the agent's V and M")
    if rows is None and controllers is not None:
        rows = range(len(seeds)) if len(controllers) > 1 else [0] * len(seeds)
    device = agent.device if agent is not None else torch.device("cpu")
    if actions is None:
        actions = agent.actions if agent is not None else CARRACING.actions
    with one_thread(device), torch.inference_mode():
        return _run(envs, seeds, max_steps, agent, controllers, rows, action_noise, record,
                    action_space=actions)


def _run(envs: Sequence[gym.Env], seeds: Sequence[int], max_steps: int, agent: Agent | None,
         controllers: Controllers | None, rows: Sequence[int] | None, action_noise: float,
         record: bool, action_space: ActionSpace) -> list[EpisodeResult]:
    queue = deque(range(len(seeds)))
    slots: list[_Running | None] = [None] * len(envs)
    results: list[EpisodeResult | None] = [None] * len(seeds)
    state = agent.initial_state(len(envs)) if controllers is not None else None

    def start(slot: int) -> None:
        slots[slot] = None
        if not queue:
            return
        i = queue.popleft()
        seed = int(seeds[i])
        obs, _ = envs[slot].reset(seed=seed)
        rng = np.random.default_rng(seed)
        slots[slot] = _Running(
            i, seed, obs, torch.Generator().manual_seed(seed), rng,
            RandomPolicy(seed, action_space) if controllers is None else None,
            record={"obs": [], "action": [], "reward": []} if record else None)
        if state is not None:
            state[0][slot] = 0.0
            state[1][slot] = 0.0

    for slot in range(len(envs)):
        start(slot)
    while live := [s for s, run in enumerate(slots) if run is not None]:
        running = [slots[s] for s in live]
        actions = _actions(running, live, agent, controllers, rows, state, action_noise)
        for slot, run, action in zip(live, running, actions, strict=True):
            obs, reward, terminated, truncated, _ = envs[slot].step(action)
            if run.record is not None:
                for key, value in (("obs", run.obs), ("action", action), ("reward", reward)):
                    run.record[key].append(value)
            run.obs, run.total, run.steps = obs, run.total + float(reward), run.steps + 1
            if terminated or truncated or run.steps >= max_steps:
                results[run.index] = _result(run, terminated, controllers is None)
                start(slot)
    return results


def _actions(running: list[_Running], live: list[int], agent: Agent | None,
             controllers: Controllers | None, rows: Sequence[int] | None,
             state: LSTMState | None, action_noise: float) -> np.ndarray:
    """(len(live), 3) float32 actions for the running episodes; M's state advances."""
    if controllers is None:
        return np.stack([run.policy(run.obs) for run in running])
    z_noise = None if agent.z_mean else torch.stack(  # per step: drawn only where it is used
        [torch.randn(agent.z_size, generator=run.z_rng) for run in running])
    noise = None
    if action_noise > 0:
        noise = torch.from_numpy(np.stack([run.rng.normal(0.0, action_noise, agent.actions.size)
                                           for run in running]).astype(np.float32))
    index = torch.tensor(live, device=agent.device)
    row_index = torch.tensor([rows[run.index] for run in running], device=agent.device)
    slot_state = (state[0][index], state[1][index])
    action, (h, c) = agent.step(np.stack([run.obs for run in running]), z_noise, controllers,
                                row_index, slot_state, noise)
    state[0][index], state[1][index] = h, c
    return action.cpu().numpy()


def _result(run: _Running, terminated: bool, random: bool) -> EpisodeResult:
    episode = None
    if run.record is not None:
        done = np.zeros(run.steps, bool)
        done[-1] = terminated
        episode = Episode(obs=np.stack(run.record["obs"]),
                          action=np.stack(run.record["action"]).astype(np.float32),
                          reward=np.asarray(run.record["reward"], np.float32), done=done,
                          seed=run.seed, policy="random" if random else "agent")
    return EpisodeResult(run.seed, run.total, run.steps, episode)
