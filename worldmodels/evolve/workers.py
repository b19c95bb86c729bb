"""Who runs the rollouts: Ray actors created once with the world model, or the same work
serially in-process (`--workers 0`). Both have one interface:

    evaluator.run(where, params, seeds, tau, max_steps, bar=None, on_rows=None,
                  done="threshold") -> Scores

`params` is (C, P) controller vectors (None: the random policy) and `seeds` (C, R): row c is
R rollouts of params[c], one per seed, in the dream (M) or in the real game. Each call
puts the parameters in Ray's object store once, where every actor reads them; a task
carries only its row indices and seeds. The weights went to each actor once, as state
dicts (not paths), so actors work on any node of a cluster. `bar` (a tqdm bar, optional)
advances by each rollout as its task finishes. `on_rows(lo, hi, scores)` (optional) is
called as each task finishes, with the (hi - lo, 2) returns and steps of rollouts lo..hi
of the flattened seeds, so a caller can keep finished work.

Real rollouts run in batches: each worker steps `envs` envs of the game together and runs
V, M and C on all their frames at once (`worldmodels.agent.run_episodes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from worldmodels.agent import Agent, WorldModel, run_episodes
from worldmodels.device import resolve_device
from worldmodels.env.dream import BatchedDream
from worldmodels.ray_session import ActorPool, warn_if_address_ignored

RowsDone = Callable[[int, int, np.ndarray], None]  # (lo, hi, (hi - lo, 2) returns and steps)


@dataclass
class Scores:
    returns: np.ndarray  # (C, R) total reward of each rollout
    steps: np.ndarray  # (C, R) steps it ran


class RolloutWorker:
    """Holds the models (and up to `envs` envs of the game); runs rows of rollouts in the
    dream or the real env."""

    def __init__(self, world: WorldModel, device: str = "cpu", envs: int = 4,
                 threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.world, self.device, self.n_envs = world, resolve_device(device), envs
        self.mdnrnn = world.mdnrnn(self.device)
        self._agent: Agent | None = None
        self._dreams: dict = {}
        self._envs: list = []
        self._env_steps = 0

    def run(self, where: str, params: np.ndarray | None, rows: np.ndarray, seeds: np.ndarray,
            tau: float, max_steps: int, done: str = "threshold") -> np.ndarray:
        """Rollout k: controller params[rows[k]] with seed seeds[k]. Returns (n, 2):
        total reward and steps per rollout."""
        if where == "dream":
            if params is None:
                raise ValueError("the dream needs controller params")
            key = (tau, max_steps, done)
            if key not in self._dreams:
                self._dreams = {key: BatchedDream(self.mdnrnn, self.world.starts(), tau,
                                                  max_steps, self.device,
                                                  self.world.game.actions, done,
                                                  self.world.done_pos_weight)}
            returns, steps = self._dreams[key].rollout(params[rows], seeds, with_steps=True,
                                                       sees_cell=self.world.sees_cell)
            return np.stack([returns, steps], 1).astype(np.float64)
        controllers = None
        if params is not None:
            if self._agent is None:
                self._agent = Agent(self.world.vae(self.device), self.mdnrnn, self.device,
                                    self.world.game.actions, self.world.real_z)
            controllers = self.world.controllers(params, self.device)
        results = run_episodes(self._env_batch(max_steps, len(seeds)), seeds, max_steps,
                               self._agent, controllers, rows, actions=self.world.game.actions)
        return np.array([[r.total_reward, r.steps] for r in results], np.float64)

    def _env_batch(self, max_steps: int, n: int) -> list:
        if self._env_steps != max_steps:
            for env in self._envs:
                env.close()
            self._envs, self._env_steps = [], max_steps
        while len(self._envs) < min(self.n_envs, n):
            self._envs.append(self.world.game.make_env(max_steps=max_steps))
        return self._envs[:n]

    def ping(self) -> bool:
        return True


def chunk_bounds(where: str, n: int, workers: int, envs: int) -> list[tuple[int, int]]:
    """(lo, hi) rollout ranges, each one task: in the dream one per worker (a bigger batch of
    dreams is faster); in the real env `envs` episodes, one batch of a worker's envs."""
    n_chunks = min(n, workers) if where == "dream" else -(-n // envs)
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _flat(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(C, R) seeds -> (row of params per rollout, seed per rollout, the shape)."""
    seeds = np.asarray(seeds)
    if seeds.ndim != 2:
        raise ValueError(f"seeds must be (candidates, rollouts), got shape {seeds.shape}")
    rows = np.repeat(np.arange(seeds.shape[0]), seeds.shape[1])
    return rows, seeds.ravel(), seeds.shape


def _scores(out: np.ndarray, shape: tuple[int, ...]) -> Scores:
    return Scores(out[:, 0].reshape(shape), out[:, 1].astype(np.int64).reshape(shape))


class SerialEvaluator:
    """In-process, no Ray: the same tasks, one after another."""

    def __init__(self, world: WorldModel, device: str = "cpu", envs: int = 4):
        self.worker, self.envs = RolloutWorker(world, device, envs), envs

    def run(self, where: str, params: np.ndarray | None, seeds: np.ndarray, tau: float = 1.0,
            max_steps: int = 1000, bar=None, on_rows: RowsDone | None = None,
            done: str = "threshold") -> Scores:
        rows, flat, shape = _flat(seeds)
        out = np.empty((len(flat), 2), np.float64)
        for lo, hi in chunk_bounds(where, len(flat), 1, self.envs):
            out[lo:hi] = self.worker.run(where, params, rows[lo:hi], flat[lo:hi], tau,
                                         max_steps, done)
            if on_rows is not None:
                on_rows(lo, hi, out[lo:hi])
            if bar is not None:
                bar.update(hi - lo)
        return _scores(out, shape)

    def close(self) -> None:
        pass


class RayEvaluator:
    """K Ray actors (an `ActorPool`), one CPU each, created once with the world model. An
    actor that dies is replaced from the same weights and its task resubmitted."""

    def __init__(self, world: WorldModel, workers: int, address: str | None = None,
                 device: str = "cpu", envs: int = 4):
        self.pool = ActorPool(RolloutWorker, (world, device, envs, 1), workers, address)
        self.envs = envs

    def run(self, where: str, params: np.ndarray | None, seeds: np.ndarray, tau: float = 1.0,
            max_steps: int = 1000, bar=None, on_rows: RowsDone | None = None,
            done: str = "threshold") -> Scores:
        import ray

        rows, flat, shape = _flat(seeds)
        chunks = chunk_bounds(where, len(flat), len(self.pool.actors), self.envs)
        params_ref = None if params is None else ray.put(np.asarray(params, np.float32))
        tasks = [(where, params_ref, rows[lo:hi], flat[lo:hi], tau, max_steps, done)
                 for lo, hi in chunks]
        out = np.empty((len(flat), 2), np.float64)
        for i, result in self.pool.run("run", tasks):
            lo, hi = chunks[i]
            out[lo:hi] = result
            if on_rows is not None:
                on_rows(lo, hi, out[lo:hi])
            if bar is not None:
                bar.update(hi - lo)
        return _scores(out, shape)

    def close(self) -> None:
        self.pool.close()


def make_evaluator(world: WorldModel, workers: int, address: str | None = None,
                   device: str = "cpu", envs: int = 4) -> SerialEvaluator | RayEvaluator:
    """`workers` 0: SerialEvaluator; otherwise a RayEvaluator with that many actors."""
    warn_if_address_ignored(address, workers)
    if workers == 0:
        return SerialEvaluator(world, device, envs)
    return RayEvaluator(world, workers, address, device, envs)
